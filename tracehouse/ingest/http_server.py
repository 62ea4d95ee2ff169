"""OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/logs`` and ``/v1/metrics`` (protobuf or JSON,
optionally gzip).

Status codes follow the OTLP/HTTP spec: 200 (with partial success when items were rejected),
400 undecodable body, 405 not POST, 413 body over ``max_request_bytes`` (after decompression),
415 unsupported content type or encoding, 503 + Retry-After when overloaded or when the data
can be neither inserted nor spooled. Error bodies are a ``google.rpc.Status`` in the request's
encoding.
"""

from __future__ import annotations

import asyncio
import logging
import zlib

import anyio.to_thread
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracehouse.ingest import metrics
from tracehouse.ingest.otlp_json import to_json
from tracehouse.ingest.pipeline import Overloaded, Unavailable
from tracehouse.ingest.receiver import Encoding, InvalidRequest, OtlpReceiver
from tracehouse.model import Signal

log = logging.getLogger(__name__)

_CONTENT_TYPES: dict[str, Encoding] = {
    "application/x-protobuf": "proto",
    "application/json": "json",
}
_MEDIA_TYPE: dict[Encoding, str] = {"proto": "application/x-protobuf", "json": "application/json"}
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class _TooLarge(Exception):
    pass


class _HttpError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


def create_app(
    receiver: OtlpReceiver, max_request_bytes: int, request_timeout_s: float
) -> Starlette:
    """The ASGI app served on the OTLP/HTTP port (4318)."""

    async def export(request: Request, signal: Signal) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        encoding: Encoding = _CONTENT_TYPES.get(media, "json")
        try:
            if request.method != "POST":
                raise _HttpError(
                    405,
                    code_pb2.UNIMPLEMENTED,
                    f"use POST for /v1/{signal.value}",
                    {"Allow": "POST"},
                )
            if media not in _CONTENT_TYPES:
                raise _HttpError(
                    415,
                    code_pb2.INVALID_ARGUMENT,
                    f"unsupported Content-Type {media or '(none)'!r}; "
                    "use application/x-protobuf or application/json",
                )
            body = await _read_body(request, max_request_bytes)
            submission = await anyio.to_thread.run_sync(receiver.submit, signal, body, encoding)
            try:
                await asyncio.wait_for(asyncio.wrap_future(submission.future), request_timeout_s)
            except TimeoutError as exc:
                raise Unavailable(f"not stored within {request_timeout_s:g}s; retry") from exc
        except _HttpError as exc:
            return _error(exc, encoding, signal)
        except InvalidRequest as exc:
            return _error(_HttpError(400, code_pb2.INVALID_ARGUMENT, str(exc)), encoding, signal)
        except Overloaded as exc:
            headers = {"Retry-After": str(exc.retry_after_s)}
            return _error(
                _HttpError(503, code_pb2.UNAVAILABLE, str(exc), headers), encoding, signal
            )
        except Unavailable as exc:
            headers = {"Retry-After": "5"}
            return _error(
                _HttpError(503, code_pb2.UNAVAILABLE, str(exc), headers), encoding, signal
            )
        metrics.REQUESTS.labels(signal.value, "http", "ok").inc()
        return Response(
            _encode(submission.response, encoding), 200, media_type=_MEDIA_TYPE[encoding]
        )

    async def traces(request: Request) -> Response:
        return await export(request, Signal.TRACES)

    async def logs(request: Request) -> Response:
        return await export(request, Signal.LOGS)

    async def metric_points(request: Request) -> Response:
        return await export(request, Signal.METRICS)

    routes = [
        Route("/v1/traces", traces, methods=_ALL_METHODS),
        Route("/v1/logs", logs, methods=_ALL_METHODS),
        Route("/v1/metrics", metric_points, methods=_ALL_METHODS),
    ]
    return Starlette(routes=routes)


async def _read_body(request: Request, limit: int) -> bytes:
    content_encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if content_encoding not in ("identity", "gzip", ""):
        raise _HttpError(
            415,
            code_pb2.INVALID_ARGUMENT,
            f"unsupported Content-Encoding {content_encoding!r}; use gzip",
        )
    too_large = _HttpError(
        413,
        code_pb2.RESOURCE_EXHAUSTED,
        f"request body exceeds max_request_bytes={limit}; send smaller batches",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    if content_encoding != "gzip":
        return body
    try:
        return _gunzip(body, limit)
    except _TooLarge:
        raise too_large from None
    except zlib.error as exc:
        raise _HttpError(400, code_pb2.INVALID_ARGUMENT, f"body is not valid gzip: {exc}") from exc


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress all gzip members of ``data``, never producing more than ``limit`` bytes."""
    out = bytearray()
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise _TooLarge
        if not inflater.eof:
            raise zlib.error("truncated gzip stream")
        data = inflater.unused_data
    return bytes(out)


def _encode(message: Message, encoding: Encoding) -> bytes:
    return message.SerializeToString() if encoding == "proto" else to_json(message)


def _error(exc: _HttpError, encoding: Encoding, signal: Signal | None) -> Response:
    if signal is not None:
        metrics.REQUESTS.labels(signal.value, "http", str(exc.status)).inc()
    if exc.status >= 500:
        log.warning("OTLP/HTTP %s: %s", exc.status, exc)
    status = status_pb2.Status(code=exc.code, message=str(exc))
    return Response(
        _encode(status, encoding), exc.status, headers=exc.headers, media_type=_MEDIA_TYPE[encoding]
    )
