"""``--roles`` runs a subset of tracehouse in one process, as production deployments do."""

from __future__ import annotations

import httpx

from tests.conftest import ServerFactory


def test_query_role_alone_serves_the_api_and_no_otlp(make_server: ServerFactory) -> None:
    app = make_server(roles=["query"])
    assert app.ports.grpc == 0
    assert app.ports.http == 0
    assert app.pipeline is None
    api = f"http://127.0.0.1:{app.ports.api}"
    assert httpx.get(f"{api}/readyz").status_code == 200
    assert "/api/v1" in httpx.get(f"{api}/openapi.json").text


def test_ingest_role_alone_accepts_otlp_and_is_probed_on_the_api_port(
    make_server: ServerFactory,
) -> None:
    app = make_server(roles=["ingest"])
    assert app.ports.grpc and app.ports.http
    api = f"http://127.0.0.1:{app.ports.api}"
    assert httpx.get(f"{api}/healthz").status_code == 200
    assert "tracehouse_ingest_requests_total" in httpx.get(f"{api}/metrics").text
    assert "/api/v1" not in httpx.get(f"{api}/openapi.json").text
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/traces",
        content=b"",
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert response.status_code == 200
