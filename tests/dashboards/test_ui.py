"""The web UI in a real headless Chromium against a running tracehouse fed by the demo
application (``tests/demoapp``: four services in separate processes exporting over OTLP), plus
log records sent with the OpenTelemetry SDK's OTLP log exporter inside one of its traces.

Every page must load with no console error, show the demo's services, and do what issue 5 asks:
topology nodes and edges, node → service page, edge → its calls, a trace in the waterfall with
its exception and logs, the slow statement first on the slow-SQL page, view state in the URL,
API errors and empty states shown. Screenshots of every page at 1366x768 and 1920x1080 are
saved under the directory printed at the end of the session.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
import tomllib
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry import trace as trace_api
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.alerting.receiver import Receiver
from tests.conftest import ServerFactory
from tests.dashboards.browser import CHROMIUM_ARGS, VIEWPORTS, Tab, require_chromium
from tests.demoapp import DemoRun, run_demo
from tracehouse.app import Tracehouse
from tracehouse.dashboards import STATIC_DIR
from tracehouse.topology import EdgeBuilder

ROOT = Path(__file__).resolve().parents[2]
SLOW_STATEMENT = (
    "WITH RECURSIVE seq(n) AS (SELECT ? UNION ALL SELECT n + ? FROM seq WHERE n < ?) "
    "SELECT count(*) FROM seq WHERE n % ? = ?"
)
FAILING_ERROR_RATE = 0.05  # the UI's threshold for "failing" (lib/dom.js)


@dataclass(frozen=True)
class Demo:
    app: Tracehouse
    run: DemoRun
    failed_trace: dict[str, Any]  # /api/v1/traces/{id} of a trace whose payment call failed
    log_body: str  # the text of the log records sent inside that trace

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.app.ports.api}/"

    def s(self, role: str) -> str:
        return self.run.service(role)

    @property
    def run_id(self) -> str:
        """The suffix every service name of this run carries."""
        return self.s("frontend").removeprefix("frontend-")

    @property
    def around_checkout(self) -> str:
        """The topology route showing only this run's graph: two hops around checkout reach
        user → frontend → checkout → inventory/payment → sqlite and nothing of other runs."""
        return f"topology?service={self.s('checkout')}&depth=2"

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base}api/v1{path}", params=params, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


def _send_logs(endpoint: str, service: str, trace_id: str, span_id: str, body: str) -> None:
    """Log records inside a span, through the SDK's OTLP/HTTP log exporter."""
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"))
    )
    span = NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(1)))
    context = trace_api.set_span_in_context(span)
    logger = provider.get_logger("tests.dashboards")
    for number, text in ((SeverityNumber.WARN, "WARN"), (SeverityNumber.ERROR, "ERROR")):
        logger.emit(
            LogRecord(
                timestamp=time.time_ns(),
                context=context,
                severity_number=number,
                severity_text=text,
                body=f"{body} ({text.lower()})",
                attributes={"card.kind": "test"},
            )
        )
    provider.shutdown()


@pytest.fixture(scope="module")
def demo(make_module_server: ServerFactory) -> Iterator[Demo]:
    app = make_module_server(roles=["ingest", "query"])  # the test runs the edge job itself
    endpoint = f"http://127.0.0.1:{app.ports.http}"
    run = run_demo(endpoint, rounds=12, protocol="http")
    assert run.payment_failures > 0, "the demo's payment never failed: nothing to mark"
    assert app.pipeline is not None and app.pipeline.wait_stored(30)
    url = f"http://127.0.0.1:{app.ports.api}/api/v1/traces/"
    failed = next(
        body
        for body in (httpx.get(url + trace_id, timeout=60).json() for trace_id in run.trace_ids)
        if body.get("errorCount")
    )
    payment_span = next(
        span
        for span in failed["spans"]
        if span["service"] == run.service("payment") and span["status"] == "error"
    )
    log_body = f"card declined for order {uuid.uuid4().hex[:8]}"
    payment = run.service("payment")
    _send_logs(endpoint, payment, failed["traceId"], payment_span["spanId"], log_body)
    assert app.pipeline.wait_stored(30)
    # Recompute the edges of every minute the run touched (the current one included).
    EdgeBuilder(app.client, lag_s=0).run_once(now=run.end + dt.timedelta(minutes=1))
    yield Demo(app, run, failed, log_body)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@contextmanager
def _tab(browser: Browser, demo: Demo, screenshots: Path, viewport: str) -> Iterator[Tab]:
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield Tab(context.new_page(), demo.base, screenshots)
    finally:
        context.close()


@pytest.fixture
def tab(browser: Browser, demo: Demo, screenshots: Path) -> Iterator[Tab]:
    """A fresh page at 1366x768 that must end the test without console errors."""
    with _tab(browser, demo, screenshots, "1366x768") as opened:
        yield opened


def assert_clean(tab: Tab) -> None:
    problems = tab.take_problems()
    assert not problems, "\n".join(problems)
    errors = tab.page.locator("[data-state=error]")
    assert errors.count() == 0, errors.all_inner_texts()


# -- every page --------------------------------------------------------------------------------

# (name, route, roles whose service names the page must show, other text it must show);
# {role} is a service name, {trace} the failed trace's id.
PAGES = [
    ("services", "services", ["frontend", "checkout", "inventory", "payment"], "p99"),
    ("service", "service?name={inventory}", ["inventory", "checkout"], "POST /reserve"),
    ("topology", "topology", ["frontend", "checkout", "inventory", "payment"], "sqlite"),
    ("traces", "traces?service={frontend}", ["frontend", "payment"], "GET /checkout"),
    ("trace", "trace?id={trace}", ["frontend", "checkout", "inventory", "payment"], "POST"),
    ("logs", "logs?service={payment}", ["payment"], "card declined"),
    ("sql", "sql", [], SLOW_STATEMENT),
    # n=100: the engine is shared with other test modules, whose services rank too.
    ("reports", "reports?n=100", ["frontend", "checkout", "inventory", "payment"], "total"),
    ("alerts", "alerts", [], "Alert"),
]


def _route(demo: Demo, route: str) -> str:
    names = {role: demo.s(role) for role in demo.run.services}
    return route.format(trace=demo.failed_trace["traceId"], **names)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
@pytest.mark.parametrize(("name", "route", "roles", "shows"), PAGES, ids=[p[0] for p in PAGES])
def test_every_page_loads_with_the_demo_services_and_no_console_error(
    browser: Browser,
    demo: Demo,
    screenshots: Path,
    name: str,
    route: str,
    roles: list[str],
    shows: str,
    viewport: str,
) -> None:
    with _tab(browser, demo, screenshots, viewport) as tab:
        page = tab.open(_route(demo, route))
        text = page.locator("main").inner_text()
        for role in roles:
            assert demo.s(role) in text, f"{name} does not show {demo.s(role)}"
        assert shows in text, f"{name} does not show {shows!r}"
        # Nothing overflows the screen sideways: the page is usable at this width.
        overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0, f"{name} is {overflow}px wider than a {viewport} screen"
        tab.shot(name)
        assert_clean(tab)


def test_the_ui_is_served_beside_the_api_and_packaged(demo: Demo) -> None:
    with httpx.Client(base_url=demo.base, timeout=60) as client:
        index = client.get("/")
        assert index.status_code == 200 and 'src="ui/app.js"' in index.text
        module = client.get("/ui/app.js")
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/no-such-file.js").status_code == 404
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/jaeger/api/services").status_code == 200
        assert client.get("/api/v1/services").status_code == 200
        # The UI is not part of the API's schema.
        assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/ui")]
    # Every file of the UI ships in the wheel (package data), or the installed UI breaks.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["tracehouse.dashboards"]
    files = [p.relative_to(STATIC_DIR.parent).as_posix() for p in STATIC_DIR.rglob("*.*")]
    assert files
    unshipped = [f for f in files if not any(fnmatch(f, pattern) for pattern in patterns)]
    assert not unshipped, f"not in package data: {unshipped}"


# -- services ----------------------------------------------------------------------------------


def test_services_are_marked_failing_from_their_error_rate(tab: Tab, demo: Demo) -> None:
    page = tab.open(f"services?q={demo.run_id}")  # the filter keeps other tests' services out
    calls = {s["service"]: s for s in demo.api("/services")["services"]}
    for role in demo.run.services:
        row = page.locator(f'tr[data-row="{demo.s(role)}"]')
        failing = calls[demo.s(role)]["error_rate"] >= FAILING_ERROR_RATE
        assert ("row-bad" in (row.get_attribute("class") or "")) == failing, role
        assert ("failing" in row.inner_text()) == failing, role
    # payment fails every fifth call: it is failing, and listed first by default.
    assert page.locator("tbody tr[data-row]").count() == len(demo.run.services)
    first = page.locator("tbody tr").first.get_attribute("data-row")
    assert first == demo.s("payment")
    assert_clean(tab)


def test_services_sort_by_a_column_header_into_the_url(tab: Tab, demo: Demo) -> None:
    page = tab.open("services")
    page.get_by_role("columnheader", name="p99", exact=True).click()
    tab.wait_for("location.hash.includes('sort=p99_ms')")
    tab.wait_ready()
    assert "dir=desc" in tab.route()
    stats = {s["service"]: s for s in demo.api("/services")["services"]}
    mine = set(demo.run.services.values())
    shown = [r.get_attribute("data-row") for r in page.locator("tbody tr[data-row]").all()]
    shown = [name for name in shown if name in mine]
    # Largest p99 first; ties keep the default order (more calls first, then by name).
    expected = sorted(mine, key=lambda n: (-stats[n]["p99_ms"], -stats[n]["calls"], n))
    assert shown == expected
    assert_clean(tab)


def test_auto_refresh_reloads_the_data(tab: Tab, demo: Demo) -> None:
    page = tab.open("services?refresh=10s")
    page.evaluate("document.querySelector('main > .page').dataset.marker = 'before'")
    # The next refresh builds a new page off-screen and swaps it in once loaded.
    tab.wait_for(
        "!document.querySelector('main > .page[data-marker]')"
        " && !!document.querySelector('main > .page[data-ready]')",
        timeout_ms=60_000,
    )
    assert demo.s("payment") in page.locator("main").inner_text()
    assert_clean(tab)


def test_a_service_page_shows_operations_sql_and_neighbours(tab: Tab, demo: Demo) -> None:
    page = tab.open(f"service?name={demo.s('inventory')}")
    text = page.locator("main").inner_text()
    assert "POST /reserve" in text  # an operation
    assert "WITH RECURSIVE" in text  # its slowest SQL
    assert demo.s("checkout") in text  # upstream
    assert "sqlite" in text  # downstream database
    assert_clean(tab)


def test_a_service_page_shows_cpu_and_memory_when_the_service_sends_them(
    tab: Tab, demo: Demo
) -> None:
    # Two instances of inventory report CPU and memory with the SDK's OTLP metric exporter.
    for instance, cpu, memory in (("inv-1", 0.82, 300 * 2**20), ("inv-2", 0.41, 200 * 2**20)):

        def observe_cpu(_: CallbackOptions, value: float = cpu) -> Iterable[Observation]:
            yield Observation(value)

        def observe_memory(_: CallbackOptions, value: int = memory) -> Iterable[Observation]:
            yield Observation(value)

        exporter = OTLPMetricExporter(endpoint=f"http://127.0.0.1:{demo.app.ports.http}/v1/metrics")
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        resource = Resource.create(
            {"service.name": demo.s("inventory"), "service.instance.id": instance}
        )
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        meter = provider.get_meter("tests.ui")
        meter.create_observable_gauge("process.cpu.utilization", callbacks=[observe_cpu])
        meter.create_observable_gauge("process.memory.usage", callbacks=[observe_memory], unit="By")
        assert provider.force_flush(30_000)
        provider.shutdown()
    assert demo.app.pipeline is not None and demo.app.pipeline.wait_stored(60)

    page = tab.open(f"service?name={demo.s('inventory')}")
    section = page.locator("section.resources")
    assert section.count() == 1
    text = section.inner_text()
    assert "CPU (process.cpu.utilization)" in text
    assert "Memory (process.memory.usage)" in text
    assert "inv-1" in text and "inv-2" in text
    assert "MiB" in text  # memory axis in bytes
    tab.shot("service-resources")
    assert_clean(tab)
    # A service without such metrics shows no empty panel.
    page = tab.open(f"service?name={demo.s('checkout')}")
    assert page.locator("section.resources").count() == 0
    assert_clean(tab)


def test_a_failing_service_page_shows_where_its_errors_start(tab: Tab, demo: Demo) -> None:
    """payment fails every fifth call: its page shows the diagnosis (GET /api/v1/diagnose),
    whose first cause is payment itself, where the errors start, with example traces."""
    page = tab.open(f"service?name={demo.s('payment')}")
    causes = page.locator("[data-state=diagnosis] li[data-cause]")
    assert causes.count() >= 1
    first = causes.first
    assert first.get_attribute("data-cause") == "service"
    text = first.inner_text()
    assert f"errors start in: {demo.s('payment')}" in text
    assert "error rate 0% →" in text  # nothing failed in the window before
    assert first.locator("a.mono").count() >= 1  # example traces
    assert_clean(tab)


# -- topology ----------------------------------------------------------------------------------


def _edge_midpoint(tab: Tab, key: str) -> tuple[float, float]:
    """Screen coordinates of the middle of an edge's drawn line (a real point on it)."""
    point = tab.page.evaluate(
        """key => {
            const path = document.querySelector(`[data-edge="${CSS.escape(key)}"] .edge-line`);
            const p = path.getPointAtLength(path.getTotalLength() / 2);
            const s = new DOMPoint(p.x, p.y).matrixTransform(path.getScreenCTM());
            return [s.x, s.y];
        }""",
        key,
    )
    return float(point[0]), float(point[1])


def test_topology_has_the_demo_nodes_and_edges(tab: Tab, demo: Demo) -> None:
    page = tab.open("topology")
    nodes = {
        node.get_attribute("data-node"): node.get_attribute("data-type")
        for node in page.locator("[data-node]").all()
    }
    for role in demo.run.services:
        assert nodes.get(demo.s(role)) == "service", role
    assert nodes.get("user") == "user"
    assert nodes.get("sqlite") == "database"
    edges = {e.get_attribute("data-edge") for e in page.locator("[data-edge]").all()}
    frontend, checkout = demo.s("frontend"), demo.s("checkout")
    inventory, payment = demo.s("inventory"), demo.s("payment")
    for source, target in [
        ("user", frontend),
        (frontend, checkout),
        (checkout, inventory),
        (checkout, payment),
        (inventory, "sqlite"),
    ]:
        assert f"{source}→{target}" in edges
    # payment fails every fifth call: its node and the edge into it are highlighted.
    assert "bad" in (page.locator(f'[data-node="{payment}"]').get_attribute("class") or "")
    edge = page.locator(f'[data-edge="{checkout}→{payment}"]')
    assert "bad" in (edge.get_attribute("class") or "")
    # Focused on checkout, two hops: exactly this run's graph.
    page = tab.open(demo.around_checkout)
    focused = {node.get_attribute("data-node") for node in page.locator("[data-node]").all()}
    assert focused == {*demo.run.services.values(), "user", "sqlite"}
    assert page.locator("[data-edge]").count() == 5
    tab.shot("topology-around-checkout")
    assert_clean(tab)


def test_clicking_a_node_opens_its_service(tab: Tab, demo: Demo) -> None:
    page = tab.open(demo.around_checkout)
    page.locator(f'[data-node="{demo.s("checkout")}"] .shape').click()
    tab.wait_for("location.hash.startsWith('#/service?')")
    tab.wait_ready()
    assert page.locator("[data-title=service]").inner_text() == demo.s("checkout")
    assert_clean(tab)


def test_clicking_an_edge_shows_its_calls(tab: Tab, demo: Demo) -> None:
    checkout, payment = demo.s("checkout"), demo.s("payment")
    expected = next(
        e
        for e in demo.api("/topology")["edges"]
        if (e["source"], e["target"]) == (checkout, payment)
    )
    page = tab.open(demo.around_checkout)
    page.mouse.click(*_edge_midpoint(tab, f"{checkout}→{payment}"))
    panel = page.locator("[data-panel=edge]")
    panel.wait_for()
    text = panel.inner_text()
    assert f"{checkout} → {payment}" in text
    assert str(expected["calls"]) in text and str(expected["errors"]) in text
    assert "sel=edge" in tab.route()  # the selection is part of the link
    tab.shot("topology-edge")
    panel.locator("[data-link=edge-traces]").click()
    tab.wait_ready()
    assert tab.route().startswith("#/traces?")
    rows = page.locator("[data-trace]")
    assert rows.count() > 0
    assert payment in page.locator("main table").inner_text()
    assert_clean(tab)


def test_topology_focuses_on_a_service(tab: Tab, demo: Demo) -> None:
    page = tab.open("topology")
    page.fill("input[name=service]", demo.s("payment"))
    page.locator("form.tools button[type=submit]").click()
    tab.wait_for("location.hash.includes('service=')")
    tab.wait_ready()
    nodes = {n.get_attribute("data-node") for n in page.locator("[data-node]").all()}
    assert nodes == {demo.s("checkout"), demo.s("payment")}  # one hop around payment
    assert_clean(tab)


def test_topology_zooms_and_pans_into_the_url(tab: Tab, demo: Demo) -> None:
    page = tab.open(demo.around_checkout)
    box = page.locator("svg.graph").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    tab.wait_for("location.hash.includes('z=')")
    before = page.locator("g.viewport").get_attribute("transform")
    page.mouse.move(box["x"] + 40, box["y"] + box["height"] - 60)
    page.mouse.down()
    page.mouse.move(box["x"] + 140, box["y"] + box["height"] - 20, steps=5)
    page.mouse.up()
    tab.wait_for(f"document.querySelector('g.viewport').getAttribute('transform') !== {before!r}")
    route = tab.route()
    page.reload()
    tab.wait_ready()
    assert tab.route() == route
    assert "scale(1)" not in (page.locator("g.viewport").get_attribute("transform") or "")
    assert_clean(tab)


# -- traces ------------------------------------------------------------------------------------


def test_a_trace_opens_in_the_waterfall_with_its_exception_and_logs(tab: Tab, demo: Demo) -> None:
    failed = demo.failed_trace
    # Search conditions hold on one span: the failed spans are payment's (and checkout's).
    page = tab.open(f"traces?service={demo.s('payment')}&status=error")
    page.locator(f'a[data-trace="{failed["traceId"]}"]').click()
    tab.wait_ready()
    rows = page.locator(".wf-row[data-span]")
    assert rows.count() == failed["spanCount"] == len(failed["spans"])
    # Tree order: every span comes after its parent.
    order = [row.get_attribute("data-span") for row in rows.all()]
    for span in failed["spans"]:
        if span["parentSpanId"] in order:
            assert order.index(span["parentSpanId"]) < order.index(span["spanId"])
    # The failed payment span: its details, with the exception event and the logs sent in it.
    payment = next(
        s for s in failed["spans"] if s["service"] == demo.s("payment") and s["status"] == "error"
    )
    page.locator(f'.wf-row[data-span="{payment["spanId"]}"]').click()
    details = page.locator("[data-panel=span]")
    details.wait_for()
    text = details.inner_text()
    assert payment["name"] in text and "error" in text
    assert page.locator("[data-event=exception]").count() == 1
    assert demo.log_body in text
    assert f"span={payment['spanId']}" in tab.route()
    logs = page.locator("[data-section=trace-logs]").inner_text()
    assert demo.log_body in logs and "ERROR" in logs
    tab.shot("trace-span-details")
    assert_clean(tab)


def test_logs_search_finds_the_records_and_opens_their_trace(tab: Tab, demo: Demo) -> None:
    page = tab.open(f"logs?service={demo.s('payment')}&severity=error")
    body = page.locator("table.logs > tbody").inner_text()
    assert f"{demo.log_body} (error)" in body
    assert f"{demo.log_body} (warn)" not in body  # below the minimum severity
    page.locator(f'a[data-trace="{demo.failed_trace["traceId"]}"]').first.click()
    tab.wait_ready()
    assert tab.route().startswith(f"#/trace?id={demo.failed_trace['traceId']}")
    assert page.locator("[data-panel=span]").count() == 1  # opened at the log's span
    assert_clean(tab)


# -- slow SQL and reports ----------------------------------------------------------------------


def test_slow_sql_lists_the_slow_statement_first(tab: Tab, demo: Demo) -> None:
    page = tab.open(f"sql?service={demo.s('inventory')}")
    first = page.locator('tr[data-rank="1"]')
    assert SLOW_STATEMENT in first.inner_text()
    first.click()
    detail = page.locator("tr.sql-detail:not([hidden]) [data-panel=sql]")
    detail.wait_for()
    assert demo.s("inventory") in detail.inner_text()
    assert "fp=" in tab.route()
    exemplar = detail.locator("a[data-trace]").first
    trace_id = exemplar.get_attribute("data-trace")
    exemplar.click()
    tab.wait_ready()
    assert tab.route().startswith(f"#/trace?id={trace_id}")
    assert page.locator(".wf-row[data-span]").count() > 0
    assert_clean(tab)


def test_reports_switch_entity_and_ranking(tab: Tab, demo: Demo) -> None:
    page = tab.open("reports?entity=error")
    first = page.locator('tr[data-rank="1"]').inner_text()
    top_error = demo.api("/reports/top", entity="error")["rows"][0]
    assert top_error["service"] in first and top_error["operation"] in first
    page.select_option("select[name=entity]", "sql")
    tab.wait_for("location.hash.includes('entity=sql')")
    tab.wait_ready()
    page.select_option("select[name=by]", "p99")
    tab.wait_for("location.hash.includes('by=p99')")
    tab.wait_ready()
    top_sql = demo.api("/reports/top", entity="sql", by="p99")["rows"][0]
    assert top_sql["fingerprint"] in page.locator('tr[data-rank="1"]').inner_text()
    assert_clean(tab)


# -- alerts ------------------------------------------------------------------------------------


def test_alerts_page_shows_the_alerting_api_or_says_it_is_missing(tab: Tab, demo: Demo) -> None:
    if httpx.get(f"{demo.base}api/v1/alerts", timeout=60).status_code == 404:
        page = tab.open("alerts")
        assert "Alerting API not available" in page.locator("[data-state=empty]").inner_text()
        assert_clean(tab)
        return
    # A rule made through the API shows up with its kind, state and health.
    name = f"ui-payment-errors-{uuid.uuid4().hex[:8]}"
    rule = {
        "name": name,
        "kind": "error_rate",
        "filters": {"service": demo.s("payment")},
        "condition": {"op": ">", "threshold": 0.01},
    }
    rules_url = f"{demo.base}api/v1/alert-rules"
    created = httpx.post(rules_url, json=rule, timeout=60)
    assert created.status_code == 201, created.text
    try:
        page = tab.open("alerts")
        text = page.locator("main").inner_text()
        for title in ("Firing and pending alerts", "Rules", "History", "Dead letters"):
            assert title in text
        row = page.locator(f'tr[data-rule="{name}"]')
        assert "error_rate" in row.inner_text()
        health = demo.api("/alert-rules")["rules"]
        expected = next(r["health"] for r in health if r["name"] == name)
        assert row.locator(f'[data-status="{expected}"]').count() == 1
        tab.shot("alerts-with-rule")
        assert_clean(tab)
    finally:
        httpx.delete(f"{rules_url}/{name}", timeout=60)


# -- shell: time range, URL state, errors, empty states ----------------------------------------


def test_time_range_and_refresh_live_in_the_url(tab: Tab, demo: Demo) -> None:
    page = tab.open("sql")
    page.select_option("#range", "15m")
    tab.wait_for("location.hash.includes('range=15m')")
    tab.wait_ready()
    page.select_option("#refresh", "30s")
    tab.wait_for("location.hash.includes('refresh=30s')")
    tab.wait_ready()
    page.select_option("select[name=sort]", "p99")
    tab.wait_for("location.hash.includes('sort=p99')")
    tab.wait_ready()
    route = tab.route()
    # The link reproduces the view, and moving to another page keeps the time range.
    page.reload()
    tab.wait_ready()
    assert page.locator("#range").input_value() == "15m"
    assert page.locator("#refresh").input_value() == "30s"
    assert page.locator("select[name=sort]").input_value() == "p99"
    page.locator("[data-nav=traces]").click()
    tab.wait_ready()
    assert "range=15m" in tab.route() and "refresh=30s" in tab.route()
    assert route != tab.route()
    assert_clean(tab)


def test_a_custom_time_range_with_no_data_says_what_to_do(tab: Tab, demo: Demo) -> None:
    page = tab.open("services")
    page.select_option("#range", "custom")
    page.fill("#from", "2001-01-01T00:00")
    page.fill("#to", "2001-01-01T01:00")
    page.get_by_role("button", name="Apply").click()
    tab.wait_for("location.hash.includes('from=')")
    tab.wait_ready()
    start = page.evaluate("new Date('2001-01-01T00:00').getTime()")  # the browser's local time
    assert f"from={start}" in tab.route() and f"to={start + 3_600_000}" in tab.route()
    empty = page.locator("[data-state=empty]")
    assert ":4317" in empty.inner_text() and "/v1/traces" in empty.inner_text()
    # The same link opened afresh shows the same range.
    page.reload()
    tab.wait_ready()
    assert page.locator("#range").input_value() == "custom"
    assert page.locator("#from").input_value() == "2001-01-01T00:00"
    assert page.locator("[data-state=empty]").count() == 1
    assert_clean(tab)


def test_api_errors_are_shown_not_swallowed(tab: Tab, demo: Demo) -> None:
    page = tab.open("traces?min_duration_ms=-5")
    error = page.locator("[data-state=error]")
    assert "422" in error.inner_text() and "min_duration_ms" in error.inner_text()
    # The browser reports the refused request; nothing else went wrong.
    problems = tab.take_problems()
    assert problems and all("422" in p for p in problems), problems


def test_an_unknown_trace_says_so(tab: Tab, demo: Demo) -> None:
    page = tab.open(f"trace?id={uuid.uuid4().hex}")
    assert "is not stored" in page.locator("[data-state=empty]").inner_text()
    problems = tab.take_problems()
    assert all("404" in p for p in problems), problems


# -- access tokens -----------------------------------------------------------------------------

ADMIN_TOKEN = "ui-admin-token-0123456789"
PAYMENT_TOKEN = "ui-payment-viewer-token-0123"


@pytest.fixture(scope="module")
def protected(demo: Demo, make_module_server: ServerFactory, tmp_path_factory: Any) -> str:
    """A second query server over the same data whose API wants a query token (access file):
    an admin, and a viewer who may see only the demo's payment service. Its UI's base URL."""
    access = tmp_path_factory.mktemp("access") / "access.yaml"
    access.write_text(
        yaml.safe_dump(
            {
                "query": [
                    {"name": "admin", "role": "admin", "token": ADMIN_TOKEN},
                    {
                        "name": "payment",
                        "role": "viewer",
                        "token": PAYMENT_TOKEN,
                        "services": [demo.s("payment")],
                    },
                ]
            }
        )
    )
    app = make_module_server(roles=["query"], access_file=access)
    return f"http://127.0.0.1:{app.ports.api}/"


def test_a_server_with_tokens_asks_for_one_and_scopes_the_pages(
    browser: Browser, demo: Demo, screenshots: Path, protected: str
) -> None:
    with _tab(browser, demo, screenshots, "1366x768") as tab:
        tab.base = protected
        page = tab.open(f"services?q={demo.run_id}")
        form = page.locator("[data-form=token]")
        form.wait_for()
        assert page.locator("[data-state=error]").first.inner_text().startswith("HTTP 401")
        tab.shot("services-token-asked")
        tab.wait_quiet()  # every request of the first render answered
        refused = tab.take_problems()  # the browser logs each 401 it was answered
        assert refused and all("401" in p for p in refused), refused
        # The admin sees every service of the run.
        form.locator("input[name=token]").fill(ADMIN_TOKEN)
        form.locator("button[type=submit]").click()
        tab.wait_for("!document.querySelector('[data-form=token]')")
        tab.wait_ready()
        rows = {r.get_attribute("data-row") for r in page.locator("tbody tr[data-row]").all()}
        assert rows == set(demo.run.services.values())
        assert_clean(tab)
        # A viewer scoped to payment sees payment only: ClickHouse enforces the scope.
        page.locator("#forget").click()
        form.wait_for()
        tab.wait_quiet()
        tab.take_problems()
        form.locator("input[name=token]").fill(PAYMENT_TOKEN)
        form.locator("button[type=submit]").click()
        tab.wait_for("!document.querySelector('[data-form=token]')")
        tab.wait_ready()
        rows = {r.get_attribute("data-row") for r in page.locator("tbody tr[data-row]").all()}
        assert rows == {demo.s("payment")}
        # The token is not in the link: a shared URL carries no secret.
        assert PAYMENT_TOKEN not in page.url
        assert_clean(tab)


# -- alerting with a worker --------------------------------------------------------------------


@dataclass(frozen=True)
class Alerting:
    base: str
    always: str  # a rule that fires at once and notifies a receiver refusing with 400
    broken: str  # a rule whose query fails
    dead_letter: str  # the id of the notification that became a dead letter

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base}api/v1{path}", params=params, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


def _poll(what: str, check: Any, timeout_s: float = 120) -> Any:
    """Wait (not a timing assertion) until ``check()`` returns something true."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def alerting(
    demo: Demo, make_module_server: ServerFactory, tmp_path_factory: Any
) -> Iterator[Alerting]:
    """A server running every role, the worker evaluating two rules from a rules file: one
    always firing whose webhook receiver (a real one, tests/alerting) refuses with 400 so that
    the notification becomes a dead letter, and one whose query fails."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    hook = Receiver(secret, script=[400] * 1000).start()
    run = demo.run_id
    always, broken = f"ui-always-{run}", f"ui-broken-{run}"
    spec = {
        "receivers": [
            {
                "name": f"ui-hook-{run}",
                "url": hook.url,
                "secret": secret,
                "group_wait": "0s",
                "backoff_initial": "0.2s",
                "backoff_max": "0.5s",
            }
        ],
        "rules": [
            {
                "name": always,
                "kind": "sql",
                "query": "SELECT 1 AS value",
                "interval": "5s",
                "condition": {"op": ">", "threshold": 0},
                "receivers": [f"ui-hook-{run}"],
                "annotations": {"summary": "always firing (UI test)"},
            },
            {
                "name": broken,
                "kind": "sql",
                "interval": "5s",
                "query": "SELECT no_such_column AS value FROM otel_traces",
                "condition": {"op": ">", "threshold": 0},
            },
        ],
    }
    rules = tmp_path_factory.mktemp("ui-alert-rules") / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    app = make_module_server(alert_rules_file=rules)
    base = f"http://127.0.0.1:{app.ports.api}/"
    probe = Alerting(base, always, broken, "")

    def dead_letter() -> str | None:
        for d in probe.api("/alert-deliveries", status="dead")["deliveries"]:
            if d["receiver"] == f"ui-hook-{run}":
                return str(d["id"])
        return None

    def evaluated() -> bool:
        health = {r["name"]: r["health"] for r in probe.api("/alert-rules")["rules"]}
        return health.get(always) == "ok" and health.get(broken) == "err"

    try:
        letter = _poll("a dead letter", dead_letter)
        _poll("both rules evaluated", evaluated)
        yield Alerting(base, always, broken, letter)
    finally:
        hook.stop()


def test_alerts_page_shows_firing_alerts_rule_health_and_replays_a_dead_letter(
    browser: Browser, demo: Demo, screenshots: Path, alerting: Alerting
) -> None:
    with _tab(browser, demo, screenshots, "1366x768") as tab:
        tab.base = alerting.base
        page = tab.open("alerts")
        firing = page.locator(f'.sec-active tr[data-alert="{alerting.always}"]')
        assert firing.locator('[data-status="firing"]').count() == 1
        assert "always firing (UI test)" in firing.inner_text()
        always = page.locator(f'.sec-rules tr[data-rule="{alerting.always}"]')
        assert always.locator('[data-status="ok"]').count() == 1  # health
        assert always.locator('[data-status="firing"]').count() == 1  # state
        broken = page.locator(f'.sec-rules tr[data-rule="{alerting.broken}"]')
        assert broken.locator('[data-status="err"]').count() == 1
        assert "no_such_column" in broken.inner_text()  # its last error
        assert page.locator(f'.sec-history tr[data-history="{alerting.always}"]').count() > 0
        tab.page.set_viewport_size({"width": 1366, "height": 1400})
        tab.shot("alerts-firing-and-dead-letter")
        letter = page.locator(f'.sec-dead tr[data-delivery="{alerting.dead_letter}"]')
        letter.get_by_role("button", name="Replay").click()
        letter.locator('[data-status="pending"]').wait_for()
        assert "queued again" in page.locator(".sec-dead").inner_text()
        replayed = alerting.api(f"/alert-deliveries/{alerting.dead_letter}")
        assert replayed["status"] in ("pending", "dead")  # queued; the receiver refuses again
        assert_clean(tab)
