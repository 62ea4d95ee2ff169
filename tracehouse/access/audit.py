"""The audit log: changes made through the API (``tracehouse_audit_log``, migration 0012),
and ``GET /api/v1/audit`` to read it (admin tokens only, see ``middleware.required_role``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tracehouse.access.tokens import Principal
from tracehouse.query.params import TimeRange, time_range

TABLE = "tracehouse_audit_log"
COLUMNS = ["At", "Principal", "Role", "Method", "Path", "Status"]
# When access control is off, changes are recorded under this name.
ANONYMOUS = "anonymous"

READ_SQL = """
SELECT At, Principal, Role, Method, Path, Status
FROM tracehouse_audit_log
WHERE At >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND At < fromUnixTimestamp64Milli({end_ms:Int64})
ORDER BY At DESC
LIMIT {limit:UInt32}
"""


@dataclass(frozen=True)
class AuditRecord:
    at: dt.datetime
    principal: str
    role: str
    method: str
    path: str
    status: int

    @classmethod
    def now(cls, who: Principal | None, method: str, path: str, status: int) -> AuditRecord:
        return cls(
            at=dt.datetime.now(dt.UTC),
            principal=who.name if who is not None else ANONYMOUS,
            role=who.role.name.lower() if who is not None else "",
            method=method,
            path=path,
            status=status,
        )


class AuditLog:
    """Writes audit records (one small insert each; changes are rare)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def write(self, record: AuditRecord) -> None:
        row = [record.at, record.principal, record.role, record.method, record.path, record.status]
        self._client.insert(TABLE, [row], column_names=COLUMNS)


class AuditEntry(BaseModel):
    at: dt.datetime
    principal: str
    role: str
    method: str
    path: str
    status: int


class AuditPage(BaseModel):
    entries: list[AuditEntry]


def router(client: Any) -> APIRouter:
    """``GET /audit``: the newest changes first."""
    api = APIRouter(tags=["access"])

    @api.get("/audit", response_model=AuditPage)
    def read_audit(
        span_range: Annotated[TimeRange, Depends(time_range)],
        limit: Annotated[int, Query(ge=1, le=10_000, description="entries returned")] = 500,
    ) -> AuditPage:
        """Changes made through the API in the range (who, role, method, path, status),
        newest first. Admin tokens only when access control is on."""
        parameters = {
            "start_ms": span_range.start_ns // 1_000_000,
            "end_ms": span_range.end_ns // 1_000_000,
            "limit": limit,
        }
        rows = client.query(READ_SQL, parameters=parameters).result_rows
        return AuditPage(
            entries=[
                AuditEntry(at=at, principal=p, role=r, method=m, path=path, status=int(s))
                for at, p, r, m, path, s in rows
            ]
        )

    return api
