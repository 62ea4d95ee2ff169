"""The OTLP/JSON mapping (OTLP spec, "JSON Protobuf Encoding") → protobuf messages.

It differs from standard proto3 JSON in one way that matters here: trace and span ids are
hex strings, not base64. Enums may be integers, 64-bit integers strings or numbers, field
names lowerCamelCase or original; unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
# Where ids live: the path of lists from the request down to the objects holding them.
_ID_PATHS = {
    "traces": (
        ("resourceSpans", "scopeSpans", "spans"),
        ("resourceSpans", "scopeSpans", "spans", "links"),
    ),
    "logs": (("resourceLogs", "scopeLogs", "logRecords"),),
    "metrics": tuple(
        ("resourceMetrics", "scopeMetrics", "metrics", kind, "dataPoints", "exemplars")
        for kind in ("gauge", "sum", "histogram", "exponentialHistogram", "summary")
    ),
}


class JsonDecodeError(ValueError):
    """The body is not a valid OTLP/JSON request; the message says where."""


def parse_json(body: bytes, message: Message, signal: str) -> Message:
    """Parse an OTLP/JSON body into ``message`` (a fresh Export*ServiceRequest)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonDecodeError(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # found by the fuzzer: '[' * 100_000 was an HTTP 500
        raise JsonDecodeError("body is not valid OTLP/JSON: nested too deeply") from exc
    if not isinstance(document, dict):
        raise JsonDecodeError("body must be a JSON object")
    for path in _ID_PATHS[signal]:
        for holder in _walk(document, path):
            _hex_ids_to_base64(holder)
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    # OverflowError, found by the fuzzer: 1e400 for an integer field was an HTTP 500.
    except (json_format.ParseError, TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise JsonDecodeError(f"body is not a valid OTLP/JSON {signal} request: {exc}") from exc
    return message


def _walk(node: Any, path: tuple[str, ...]) -> list[dict[str, Any]]:
    level = [node]
    for key in path:
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children = item.get(key) or item.get(_snake(key))
                if isinstance(children, list):
                    nxt.extend(c for c in children if isinstance(c, dict))
                elif isinstance(children, dict):  # a message field, such as a metric's gauge
                    nxt.append(children)
        level = nxt
    return level


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _hex_ids_to_base64(holder: dict[str, Any]) -> None:
    for key in _ID_FIELDS:
        value = holder.get(key)
        if not isinstance(value, str) or not value:
            continue
        try:
            raw = binascii.unhexlify(value)
        except (binascii.Error, ValueError) as exc:
            raise JsonDecodeError(f"{key} {value[:40]!r} is not a hex string") from exc
        holder[key] = base64.b64encode(raw).decode("ascii")


def to_json(message: Message) -> bytes:
    """Encode a response message in OTLP/JSON (lowerCamelCase, defaults omitted)."""
    return json.dumps(json_format.MessageToDict(message)).encode()
