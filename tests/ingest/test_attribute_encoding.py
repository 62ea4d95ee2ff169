"""Every AnyValue kind is stored as docs/attribute-encoding.md says, on the real engine."""

from __future__ import annotations

import base64
import json
import math
import os

import httpx
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from tests.conftest import ServerFactory as ServerFactoryType
from tests.conftest import query
from tests.ingest.otlp_factory import trace_request
from tracehouse.app import Tracehouse


def _array(*values: AnyValue) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=list(values)))


def _kvlist(**values: AnyValue) -> AnyValue:
    return AnyValue(
        kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in values.items()])
    )


S = lambda text: AnyValue(string_value=text)  # noqa: E731
I = lambda number: AnyValue(int_value=number)  # noqa: E731, E741
D = lambda number: AnyValue(double_value=number)  # noqa: E731
B = lambda flag: AnyValue(bool_value=flag)  # noqa: E731

DEEP = _array(_array(_array(_array(S("bottom")))))

CASES = {
    "string": (S('héllo "✓"'), 'héllo "✓"'),
    "empty-string": (S(""), ""),
    "int": (I(-(2**63)), "-9223372036854775808"),
    "int-zero": (I(0), "0"),
    "bool-false": (B(False), "false"),
    "double": (D(637.704), "637.704"),
    "double-whole": (D(2.0), "2"),
    "double-huge": (D(1e100), "1e100"),
    "double-nan": (D(math.nan), "nan"),
    "double-inf": (D(-math.inf), "-inf"),
    "bytes": (AnyValue(bytes_value=b"\x00\x01\x02\xff"), "AAEC/w=="),
    "empty-value": (AnyValue(), ""),
    "array-mixed": (
        _array(S("a"), I(2**62), D(2.5), B(True), AnyValue(bytes_value=b"\xff"), D(math.inf)),
        '["a",4611686018427387904,2.5,true,"/w==","inf"]',
    ),
    "array-empty": (_array(), "[]"),
    "kvlist-nested": (
        _kvlist(user=_kvlist(id=I(7), name=S("ann")), tags=_array(S("x"), S("y")), ok=B(False)),
        '{"user":{"id":7,"name":"ann"},"tags":["x","y"],"ok":false}',
    ),
}


def _post(app: Tracehouse, service: str, attributes: dict[str, AnyValue]) -> None:
    request = trace_request(service, spans=1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    for key, value in attributes.items():
        span.attributes.append(KeyValue(key=key, value=value))
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/traces",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 200


def _attributes(app: Tracehouse, service: str) -> dict[str, str]:
    rows = query(
        app, "SELECT SpanAttributes FROM otel_traces WHERE ServiceName = {s:String}", s=service
    )
    assert len(rows) == 1
    return dict(rows[0][0])


def test_every_kind_is_stored_as_documented(server: Tracehouse, service_name: str) -> None:
    _post(server, service_name, {name: value for name, (value, _) in CASES.items()})
    stored = _attributes(server, service_name)
    assert stored == {name: text for name, (_, text) in CASES.items()}
    assert list(stored) == sorted(stored)
    assert json.loads(stored["kvlist-nested"])["user"] == {"id": 7, "name": "ann"}


def test_a_container_at_the_third_level_keeps_its_protobuf_bytes(
    server: Tracehouse, service_name: str
) -> None:
    _post(server, service_name, {"deep": DEEP})
    stored = json.loads(_attributes(server, service_name)["deep"])
    marker = stored[0][0]
    assert list(marker) == ["otlp.protobuf.base64"]
    innermost = ArrayValue.FromString(base64.b64decode(marker["otlp.protobuf.base64"]))
    assert innermost == DEEP.array_value.values[0].array_value.values[0].array_value


# The limit applies to every value, resource attributes included: the test's service name
# (16 characters) must fit.
@pytest.mark.parametrize("limit", [16, 64])
def test_long_values_are_cut_to_the_limit_in_characters(
    make_server: ServerFactoryType, service_name: str, limit: int
) -> None:
    app = make_server(max_attribute_value_length=limit)
    text = "é" * (limit + 10)
    _post(
        app,
        service_name,
        {"long": S(text), "short": S("ok"), "blob": AnyValue(bytes_value=os.urandom(limit))},
    )
    stored = _attributes(app, service_name)
    assert stored["long"] == "é" * limit
    assert stored["short"] == "ok"
    assert len(stored["blob"]) == limit


def test_invalid_utf8_in_a_protobuf_string_is_refused(
    server: Tracehouse, service_name: str
) -> None:
    request = trace_request(service_name, spans=1)
    body = request.SerializeToString().replace(b"op-0", b"op-\xff")
    response = httpx.post(
        f"http://127.0.0.1:{server.ports.http}/v1/traces",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 400
