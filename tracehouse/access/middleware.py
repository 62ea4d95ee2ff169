"""Access control at the two doors: the query role's HTTP app and OTLP ingest.

- ``ApiAccess`` (ASGI, port 8080): with query tokens configured, ``/api/`` and ``/jaeger/``
  need ``Authorization: Bearer <token>`` (401 without a known one, 403 when the role is too
  low); the request then runs as the token's principal, whose service scope ClickHouse
  enforces (:mod:`tracehouse.access.scope`). Changes (any method but GET/HEAD/OPTIONS) are
  written to the audit log with who, what and the outcome. Every answer carries security
  headers; no CORS header is sent unless origins are configured.
- ``IngestAccess`` (ASGI, port 4318) and ``GrpcIngestAccess`` (gRPC, port 4317): with ingest
  tokens configured, a request without a known token is refused — HTTP 401 with a
  ``google.rpc.Status`` body in the request's encoding, gRPC UNAUTHENTICATED — before its
  body is read. The token comes from ``Authorization: Bearer …`` or the configured header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import grpc
from google.rpc import code_pb2, status_pb2
from prometheus_client import Counter

from tracehouse.access.audit import AuditLog, AuditRecord
from tracehouse.access.scope import acting_as
from tracehouse.access.tokens import AccessControl, Principal, Role, bearer

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

AUTH_FAILURES = Counter(
    "tracehouse_auth_failures",
    "Requests refused for a missing or unknown token, or a role too low",
    ["door", "reason"],
)
INGEST_BY_APPLICATION = Counter(
    "tracehouse_ingest_authenticated_requests",
    "Ingest requests accepted past the token check, per application",
    ["application"],
)

_PROTECTED = ("/api/", "/jaeger/")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ADMIN_PATHS = ("/api/v1/audit",)
# No script or style from elsewhere, no framing, no referrer; /docs (Swagger UI from a CDN)
# gets the other headers only.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def required_role(method: str, path: str) -> Role:
    """The least role that may send ``method`` to ``path``."""
    if path.startswith(_ADMIN_PATHS):
        return Role.ADMIN
    return Role.VIEWER if method in _SAFE_METHODS else Role.EDITOR


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _json_error(send: Send, status: int, message: str, extra: list[Any]) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), *extra, *_SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiAccess:
    """Authentication, roles, scopes, audit and security headers of the query role's app."""

    def __init__(self, app: Asgi, access: AccessControl, audit: AuditLog | None) -> None:
        self._app = app
        self._access = access
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        csp = not path.startswith(("/docs", "/redoc"))

        status_seen: list[int] = []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(int(message["status"]))
                extra = list(_SECURITY_HEADERS)
                if csp:
                    extra.append((b"content-security-policy", _CSP.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        principal: Principal | None = None
        if self._access.query_enabled and path.startswith(_PROTECTED):
            principal = self._access.query_principal(bearer(_header(scope, b"authorization")))
            if principal is None:
                AUTH_FAILURES.labels("api", "token").inc()
                await _json_error(
                    send,
                    401,
                    "a query token is required: send Authorization: Bearer <token>",
                    [(b"www-authenticate", b'Bearer realm="tracehouse"')],
                )
                return
            needed = required_role(method, path)
            if not principal.may(needed):
                AUTH_FAILURES.labels("api", "role").inc()
                await _json_error(
                    send,
                    403,
                    f"token {principal.name!r} is {principal.role.name.lower()}; "
                    f"{method} {path} needs {needed.name.lower()}",
                    [],
                )
                await self._record(principal, method, path, 403)
                return
        with acting_as(principal):
            try:
                await self._app(scope, receive, send_with_headers)
            finally:
                if method not in _SAFE_METHODS and path.startswith("/api/"):
                    await self._record(
                        principal, method, path, status_seen[0] if status_seen else 500
                    )

    async def _record(
        self, principal: Principal | None, method: str, path: str, status: int
    ) -> None:
        if self._audit is None:
            return
        record = AuditRecord.now(principal, method, path, status)
        try:
            await anyio.to_thread.run_sync(self._audit.write, record)
        except Exception:  # the change is done; a lost audit row is logged, not hidden
            log.exception("audit log write failed: %s", record)


class IngestAccess:
    """The ingest token check of the OTLP/HTTP app."""

    def __init__(self, app: Asgi, access: AccessControl, header: str) -> None:
        self._app = app
        self._access = access
        self._header = header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._access.ingest_enabled:
            await self._app(scope, receive, send)
            return
        application = self._access.ingest_application(bearer(_header(scope, self._header)))
        if application is None:
            AUTH_FAILURES.labels("ingest_http", "token").inc()
            await _status_error(scope, send, self._header.decode())
            return
        INGEST_BY_APPLICATION.labels(application.application).inc()
        await self._app(scope, receive, send)


async def _status_error(scope: Scope, send: Send, header: str) -> None:
    """401 with a ``google.rpc.Status`` (UNAUTHENTICATED) in the request's encoding."""
    message = f"an ingest token is required in the {header} header"
    status = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message)
    content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = json.dumps({"code": status.code, "message": message}).encode()
    else:
        content_type = "application/x-protobuf"
        body = status.SerializeToString()
    headers = [
        (b"content-type", content_type.encode()),
        (b"www-authenticate", b'Bearer realm="tracehouse"'),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GrpcIngestAccess(grpc.ServerInterceptor):  # type: ignore[misc]
    """The ingest token check of the OTLP/gRPC server: UNAUTHENTICATED without a known
    token in the ``authorization`` metadata (``Bearer …``) or the configured header."""

    def __init__(self, access: AccessControl, header: str) -> None:
        self._access = access
        self._header = header.lower()

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"an ingest token is required in the {self._header} metadata",
            )

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        if not self._access.ingest_enabled:
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        application = self._access.ingest_application(bearer(metadata.get(self._header)))
        if application is None:
            AUTH_FAILURES.labels("ingest_grpc", "token").inc()
            return self._refusal
        INGEST_BY_APPLICATION.labels(application.application).inc()
        return continuation(handler_call_details)
