"""Access: who may send telemetry and who may read what (tokens, roles, service scopes,
audit log, security headers). Wired in the composition root (tracehouse/app.py)."""

from tracehouse.access.audit import AuditLog
from tracehouse.access.audit import router as audit_router
from tracehouse.access.middleware import ApiAccess, GrpcIngestAccess, IngestAccess
from tracehouse.access.scope import ScopedClient, acting_as, current_principal
from tracehouse.access.tokens import (
    AccessControl,
    AccessFileError,
    Application,
    Principal,
    Role,
    token_digest,
)

__all__ = [
    "AccessControl",
    "AccessFileError",
    "ApiAccess",
    "Application",
    "AuditLog",
    "GrpcIngestAccess",
    "IngestAccess",
    "Principal",
    "Role",
    "ScopedClient",
    "acting_as",
    "audit_router",
    "current_principal",
    "token_digest",
]
