"""Query tokens: authentication, roles, service scopes on every read endpoint, the audit log,
security headers and CORS — against a running server with an access file.

The data (names carry the run's suffix; times a few minutes ago):

- trace 1: ``a`` (server) → ``c`` (client span of a, server span of c), with a log record
  of each service;
- trace 2: ``c`` alone (root) with a SQL call ``SELECT c``;
- trace 3: ``b`` (server) with a SQL call ``SELECT b``, and a log record;
- ``o'q``: a service whose name needs quoting (a scope holds it).

Tokens: ``admin`` (every service), ``ab`` (viewer of a and b), ``editor`` (editor of a),
``quote`` (viewer of o'q), ``nobody`` (viewer of an empty scope).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.topology.spans import Run, Span, send
from tracehouse.access import token_digest
from tracehouse.access.scope import TABLE_FILTERS, UNSCOPED_TABLES
from tracehouse.app import Tracehouse
from tracehouse.config import Settings
from tracehouse.topology import EdgeBuilder

TOKENS = {
    "admin": "admin-token-0123456789",
    "ab": "ab-viewer-token-0123456789",
    "editor": "editor-token-0123456789",
    "quote": "quote-viewer-token-01234",
    "nobody": "nobody-viewer-token-0123",
}


@dataclass(frozen=True)
class Site:
    app: Tracehouse
    run: Run
    traces: dict[str, str]  # name -> trace id

    def n(self, name: str) -> str:
        return self.run.name(name)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.app.ports.api}{path}"

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKENS[token]}"} if token else {}
        window = {"start": str(self.run.base_ns // 10**9 - 60), "end": str(int(time.time()) + 60)}
        return httpx.get(self.url(path), params={**window, **params}, headers=headers, timeout=30)

    def ok(self, path: str, token: str, **params: Any) -> Any:
        response = self.get(path, token, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def mine(self, names: Any) -> set[str]:
        """This run's names among ``names``, without the suffix."""
        suffix = f"-{self.run.suffix}"
        return {str(n).removesuffix(suffix) for n in names if str(n).endswith(suffix)}


def _access_file(path: Path, run: Run) -> Path:
    def entry(name: str, role: str, services: list[str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "role": role}
        # One by hash, the others in clear: both forms are read.
        if name == "admin":
            out["token_sha256"] = token_digest(TOKENS[name])
        else:
            out["token"] = TOKENS[name]
        if services is not None:
            out["services"] = services
        return out

    document = {
        "query": [
            entry("admin", "admin", None),
            entry("ab", "viewer", [run.name("a"), run.name("b")]),
            entry("editor", "editor", [run.name("a")]),
            entry("quote", "viewer", [run.name("o'q")]),
            entry("nobody", "viewer", []),
        ]
    }
    path.write_text(yaml.safe_dump(document))
    return path


def _logs(app: Tracehouse, at_ns: int, records: list[tuple[str, str, str]]) -> None:
    """(service, trace id, body) log records at ``at_ns`` over OTLP/HTTP JSON."""
    request = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": str(at_ns),
                                "severityNumber": 9,
                                "traceId": trace_id,
                                "body": {"stringValue": body},
                            }
                        ]
                    }
                ],
            }
            for service, trace_id, body in records
        ]
    }
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/logs",
        content=json.dumps(request),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert app.pipeline is not None and app.pipeline.wait_stored(30)


@pytest.fixture(scope="module")
def site(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    run = Run()
    directory = tmp_path_factory.mktemp("access")
    settings = Settings(
        data_dir=directory / "data",
        clickhouse_url=engine_url,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        api_port=0,
        roles=["ingest", "query"],
        access_file=_access_file(directory / "access.yaml", run),
    )
    app = Tracehouse(settings)
    app.start()
    try:
        n = run.name
        a = Span(n("a"), "server", run.at(0), 50, name="GET /a")
        a_calls_c = a.child(n("a"), "client", duration_ms=30, name="GET /c")
        c_child = a_calls_c.child(n("c"), duration_ms=20, name="GET /c")
        c_root = Span(n("c"), "server", run.at(100), 40, name="GET /c")
        sql = {"db.system.name": "postgresql", "db.namespace": n("db")}
        c_sql = c_root.child(
            n("c"), "client", name="SELECT", attrs={**sql, "db.query.text": "SELECT c"}
        )
        b = Span(n("b"), "server", run.at(200), 60, name="GET /b")
        b_sql = b.child(n("b"), "client", name="SELECT", attrs={**sql, "db.query.text": "SELECT b"})
        q = Span(n("o'q"), "server", run.at(300), 10, name="GET /q")
        send(app, a, a_calls_c, c_child, c_root, c_sql, b, b_sql, q)
        _logs(
            app,
            run.at(10),
            [
                (n("a"), a.trace_id, "log of a"),
                (n("c"), a.trace_id, "log of c"),
                (n("b"), b.trace_id, "log of b"),
            ],
        )
        EdgeBuilder(app.client, lag_s=0, window_min=15).run_once()
        yield Site(app, run, {"ac": a.trace_id, "c": c_root.trace_id, "b": b.trace_id})
    finally:
        app.stop()


# --- who may call ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/services", "/jaeger/api/services"])
def test_without_a_known_token_reads_are_refused(site: Site, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token-0123456789"}, {"Authorization": "x"}):
        response = httpx.get(site.url(path), headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in response.json()["detail"]


def test_health_metrics_and_the_ui_stay_open(site: Site) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/"):
        assert httpx.get(site.url(path), timeout=30).status_code == 200, path


def test_a_viewer_reads_but_does_not_change(site: Site) -> None:
    rule = {"name": f"r-{site.run.suffix}", "kind": "nonsense"}
    refused = httpx.post(
        site.url("/api/v1/alert-rules"),
        json=rule,
        headers={"Authorization": f"Bearer {TOKENS['ab']}"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert "needs editor" in refused.json()["detail"]
    # An editor gets through to the endpoint (which judges the rule itself).
    passed = httpx.post(
        site.url("/api/v1/alert-rules"),
        json=rule,
        headers={"Authorization": f"Bearer {TOKENS['editor']}"},
        timeout=30,
    )
    assert passed.status_code == 422, passed.text

    # Both attempts are in the audit log, which only an admin reads.
    assert site.get("/api/v1/audit", "editor").status_code == 403
    entries = site.ok("/api/v1/audit", "admin")["entries"]
    mine = [(e["principal"], e["role"], e["method"], e["path"], e["status"]) for e in entries]
    assert ("ab", "viewer", "POST", "/api/v1/alert-rules", 403) in mine
    assert ("editor", "editor", "POST", "/api/v1/alert-rules", 422) in mine
    assert not any(TOKENS["editor"] in json.dumps(e) for e in entries)


def test_only_an_admin_creates_expert_sql_rules(site: Site) -> None:
    rule = {
        "name": f"expert-{site.run.suffix}",
        "kind": "sql",
        "query": "SELECT 2 AS value",
        "interval": "5s",
        "condition": {"op": ">", "threshold": 1},
    }

    def post(token: str) -> httpx.Response:
        return httpx.post(
            site.url("/api/v1/alert-rules"),
            json=rule,
            headers={"Authorization": f"Bearer {TOKENS[token]}"},
            timeout=30,
        )

    refused = post("editor")
    assert refused.status_code == 403
    assert "admin token is needed" in refused.json()["detail"]
    assert post("admin").status_code == 201
    deleted = httpx.delete(
        site.url(f"/api/v1/alert-rules/{rule['name']}"),
        headers={"Authorization": f"Bearer {TOKENS['admin']}"},
        timeout=30,
    )
    assert deleted.status_code == 204


# --- what a scope sees ---------------------------------------------------------------------


def test_services_and_operations_of_the_scope_only(site: Site) -> None:
    every = site.mine(s["service"] for s in site.ok("/api/v1/services", "admin")["services"])
    assert every == {"a", "b", "c", "o'q"}
    scoped = site.mine(s["service"] for s in site.ok("/api/v1/services", "ab")["services"])
    assert scoped == {"a", "b"}
    assert site.ok(f"/api/v1/services/{site.n('c')}/operations", "ab")["operations"] == []
    assert site.ok("/api/v1/services", "nobody")["services"] == []


def test_a_quoted_name_in_a_scope_is_one_name(site: Site) -> None:
    seen = site.mine(s["service"] for s in site.ok("/api/v1/services", "quote")["services"])
    assert seen == {"o'q"}


def test_traces_show_only_spans_of_the_scope(site: Site) -> None:
    spans = site.ok(f"/api/v1/traces/{site.traces['ac']}", "ab")["spans"]
    assert site.mine(s["service"] for s in spans) == {"a"}
    assert len(spans) == 2  # a's server and client spans; c's server span is not shown
    assert site.get(f"/api/v1/traces/{site.traces['c']}", "ab").status_code == 404
    assert site.get(f"/api/v1/traces/{site.traces['c']}", "admin").status_code == 200
    found = site.ok("/api/v1/traces", "ab", service=site.n("c"))
    assert found["traces"] == []


def test_logs_of_the_scope_only(site: Site) -> None:
    bodies = {r["body"] for r in site.ok("/api/v1/logs", "ab", text="log of")["logs"]}
    assert {"log of a", "log of b"} <= bodies
    assert "log of c" not in bodies
    inline = site.ok(f"/api/v1/traces/{site.traces['ac']}", "ab")["logs"]
    assert [r["body"] for r in inline] == ["log of a"]


def test_topology_keeps_edges_touching_the_scope(site: Site) -> None:
    edges = site.ok("/api/v1/topology", "ab")["edges"]
    pairs = {
        (e["source"], e["target"]) for e in edges if site.run.suffix in e["source"] + e["target"]
    }
    assert (site.n("a"), site.n("c")) in pairs  # a calls c: it touches a
    assert (site.n("c"), site.n("db")) not in pairs  # c's own database calls: not a's or b's
    assert (site.n("b"), site.n("db")) in pairs


def test_sql_reports_and_slow_services_of_the_scope_only(site: Site) -> None:
    statements = site.ok("/api/v1/sql", "ab", namespace=site.n("db"))["statements"]
    assert [s["statement"] for s in statements] == ["SELECT b"]
    rows = site.ok("/api/v1/reports/top", "ab", entity="service", n=100)["rows"]
    assert site.mine(r["service"] for r in rows) == {"a", "b"}
    slow = site.ok("/api/v1/slow-services", "ab", threshold_ms=1, min_calls=1)["items"]
    assert site.mine(i["service"] for i in slow) == {"a", "b"}


def test_the_jaeger_api_is_scoped_too(site: Site) -> None:
    assert site.mine(site.ok("/jaeger/api/services", "ab")["data"]) == {"a", "b"}
    found = site.ok(f"/jaeger/api/traces/{site.traces['ac']}", "ab")["data"][0]
    services = {p["serviceName"] for p in found["processes"].values()}
    assert site.mine(services) == {"a"}
    missing = site.get(f"/jaeger/api/traces/{site.traces['c']}", "ab")
    assert missing.status_code == 404


def test_every_table_is_filtered_for_scopes_or_holds_no_service_data(site: Site) -> None:
    tables = {
        name
        for (name,) in site.app.client.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() "
            "AND engine NOT IN ('MaterializedView', 'View')"
        ).result_rows
    }
    assert "otel_traces" in tables
    unlisted = tables - set(TABLE_FILTERS) - UNSCOPED_TABLES
    assert unlisted == set(), "add these to TABLE_FILTERS or UNSCOPED_TABLES"


def test_alerts_of_other_services_are_not_seen(site: Site) -> None:
    now = dt.datetime.now(dt.UTC)
    rule = f"latency-{site.run.suffix}"
    rows = [
        [rule, f"fp-{name}", {"service": site.n(name)}, "firing", now, now, time.time_ns()]
        for name in ("a", "c")
    ]
    columns = ["Rule", "Fingerprint", "Labels", "State", "ActiveAt", "LastEvaluation", "Version"]
    site.app.client.insert("tracehouse_alert_state", rows, column_names=columns)

    def firing(token: str) -> set[str]:
        alerts = site.ok("/api/v1/alerts", token)["alerts"]
        return site.mine(a["labels"]["service"] for a in alerts if a["rule"] == rule)

    assert firing("admin") == {"a", "c"}
    assert firing("ab") == {"a"}
    assert firing("nobody") == set()


# --- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/v1/services", "/healthz"])
def test_security_headers_and_no_cors_by_default(site: Site, path: str) -> None:
    response = httpx.get(
        site.url(path),
        headers={"Origin": "https://evil.example", "Authorization": f"Bearer {TOKENS['admin']}"},
        timeout=30,
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "access-control-allow-origin" not in response.headers


def test_cors_only_for_configured_origins(make_server: Any) -> None:
    app = make_server(roles=["query"], cors_allow_origins=["https://grafana.example"])
    url = f"http://127.0.0.1:{app.ports.api}/api/v1/services"
    allowed = httpx.get(url, headers={"Origin": "https://grafana.example"}, timeout=30)
    assert allowed.headers["access-control-allow-origin"] == "https://grafana.example"
    other = httpx.get(url, headers={"Origin": "https://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in other.headers


def test_without_an_access_file_changes_are_audited_as_anonymous(make_server: Any) -> None:
    app = make_server(roles=["query"])
    base = f"http://127.0.0.1:{app.ports.api}/api/v1"
    name = f"anon-{time.time_ns()}"
    response = httpx.delete(f"{base}/silences/{name}", timeout=30)
    entries = httpx.get(f"{base}/audit", timeout=30).json()["entries"]
    assert ("anonymous", "DELETE", f"/api/v1/silences/{name}", response.status_code) in [
        (e["principal"], e["method"], e["path"], e["status"]) for e in entries
    ]
