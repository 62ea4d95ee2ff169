"""SQL injection through every parameter of every read endpoint (/api/v1/* and /jaeger/api/*),
enumerated from the app's own OpenAPI document so that new endpoints are covered without
editing this test: each answer is 200 or 4xx, never 500, and none shows another service's
data; the tables are intact afterwards."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import trace_request
from tracehouse.app import Tracehouse

_PREFIXES = ("/api/v1/", "/jaeger/api/")
# Parameters that name the service whose data is asked for.
_SERVICE_PARAMETERS = {"service"}


def _payloads(attacker: str) -> list[str]:
    return [
        f"{attacker}' OR '1'='1",
        f"{attacker}') OR 1=1 --",
        f"{attacker}\\' OR 1=1 #",
        "1; DROP TABLE otel_traces",
        "x' UNION SELECT ServiceName FROM otel_traces --",
        "{service:String}",  # clickhouse-connect's placeholder syntax
        "%(service)s",
    ]


@pytest.fixture(scope="module")
def seeded(make_module_server: ServerFactory) -> tuple[Tracehouse, str, str]:
    """A server holding one span each of a victim and an attacker service."""
    app = make_module_server()
    run = uuid.uuid4().hex[:10]
    victim, attacker = f"victim-{run}", f"attacker-{run}"
    for service in (victim, attacker):
        body = trace_request(service, spans=2).SerializeToString()
        response = httpx.post(
            f"http://127.0.0.1:{app.ports.http}/v1/traces",
            content=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert response.status_code == 200
    rows = query(app, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=victim)
    assert rows == [(2,)]
    return app, victim, attacker


def _read_endpoints(app: Tracehouse) -> list[tuple[str, list[dict[str, Any]]]]:
    spec = httpx.get(f"http://127.0.0.1:{app.ports.api}/openapi.json", timeout=30).json()
    return [
        (path, ops["get"].get("parameters", []))
        for path, ops in spec["paths"].items()
        if path.startswith(_PREFIXES) and "get" in ops
    ]


def _default(parameter: dict[str, Any], attacker: str) -> str | None:
    """A harmless value for a parameter that is not under attack (required ones only, and
    every service filter, so that an answer with another service's data stands out)."""
    if parameter["name"] in _SERVICE_PARAMETERS:
        return attacker
    if not parameter.get("required"):
        return None
    return "1" if parameter.get("schema", {}).get("type") in ("integer", "number") else "x"


def test_every_read_endpoint_is_enumerated(seeded: tuple[Tracehouse, str, str]) -> None:
    paths = {path for path, _ in _read_endpoints(seeded[0])}
    assert {"/api/v1/traces", "/api/v1/logs", "/jaeger/api/traces", "/api/v1/sql"} <= paths
    assert sum(len(parameters) for _, parameters in _read_endpoints(seeded[0])) >= 60


def test_injection_through_every_parameter_gets_no_500_and_no_other_service_data(
    seeded: tuple[Tracehouse, str, str],
) -> None:
    app, victim, attacker = seeded
    failures: list[str] = []
    tried = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{app.ports.api}", timeout=60) as client:
        for path, parameters in _read_endpoints(app):
            for target in parameters:
                for payload in _payloads(attacker):
                    url = path
                    params: dict[str, str] = {}
                    for parameter in parameters:
                        value = payload if parameter is target else _default(parameter, attacker)
                        if value is None:
                            continue
                        if parameter["in"] == "path":
                            url = url.replace("{" + parameter["name"] + "}", quote(value, safe=""))
                        else:
                            params[parameter["name"]] = value
                    response = client.get(url, params=params)
                    tried += 1
                    where = f"{path} {target['name']}={payload!r}: HTTP {response.status_code}"
                    if response.status_code >= 500:
                        failures.append(f"{where} {response.text[:200]}")
                    elif victim in response.text and any(
                        p["name"] in _SERVICE_PARAMETERS for p in parameters
                    ):
                        failures.append(f"{where} shows the victim service's data")
    assert tried >= 60 * len(_payloads(attacker))
    assert not failures, "\n".join(failures)
    rows = query(app, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=victim)
    assert rows == [(2,)]  # nothing dropped or changed
