"""``tracehouse bench alerting``: time to detect, and the cost of evaluating many rules.

1. **Time to detect** (issue 4): a tracehouse on a temporary embedded engine with one
   latency rule per trial (``interval: 5s``, ``for: 2`` evaluations, ``group_wait: 0s``) and a
   webhook receiver on loopback. Each trial sends breaching spans over OTLP/HTTP and measures
   from the moment the request is acknowledged to the moment the webhook arrives. Target:
   ``for`` duration + 2 x interval + 2 s = 22 s.
2. **Evaluation of N rules** over seeded spans (``bench query``'s generator, inside
   ClickHouse): N rules of every rollup kind over the seeded services, all due at once, one
   worker evaluation pass timed (queries, evaluation, state and health writes). Target:
   within one 15 s interval.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tracehouse.alerting.rules import Rule

INTERVAL_S = 5
FOR_EVALUATIONS = 2
TARGET_S = FOR_EVALUATIONS * INTERVAL_S + 2 * INTERVAL_S + 2


class _Hook:
    """A loopback webhook receiver noting when each alert name first arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with owner.cond:
                    for alert in body.get("alerts", []):
                        owner.arrived.setdefault(alert["labels"]["alertname"], at)
                    owner.cond.notify_all()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, name: str, timeout_s: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: name in self.arrived, timeout_s)
            return self.arrived.get(name)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _slow_spans(service: str, count: int, duration_ms: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    scope = resource_spans.scope_spans.add()
    now = time.time_ns()
    for i in range(count):
        span = Span(
            trace_id=os.urandom(16),
            span_id=os.urandom(8),
            name="GET /checkout",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=now - duration_ms * 1_000_000 - i * 1_000_000,
            end_time_unix_nano=now - i * 1_000_000,
        )
        scope.spans.append(span)
    return request.SerializeToString()


def time_to_detect(trials: int, data_dir: Path) -> list[float]:
    """Seconds from acknowledged breaching spans to the webhook, per trial."""
    from tracehouse.app import Tracehouse
    from tracehouse.config import Settings

    hook = _Hook()
    names = [f"ttd-{i}-{os.urandom(3).hex()}" for i in range(trials)]
    rules_file = data_dir / "bench-rules.yaml"
    rules_file.write_text(
        yaml.safe_dump(
            {
                "receivers": [
                    {
                        "name": "bench",
                        "url": hook.url,
                        "group_wait": "0s",
                        "group_by": ["alertname"],
                    }
                ],
                "rules": [
                    {
                        "name": name,
                        "kind": "latency",
                        "filters": {"service": name},
                        "interval": f"{INTERVAL_S}s",
                        "for": FOR_EVALUATIONS,
                        "condition": {"op": ">", "threshold": 500},
                        "receivers": ["bench"],
                    }
                    for name in names
                ],
            }
        )
    )
    settings = Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        api_port=0,
        alert_rules_file=rules_file,
        log_level="WARNING",
    )
    app = Tracehouse(settings)
    app.start()
    results = []
    try:
        time.sleep(2 * INTERVAL_S)  # every rule evaluated at least once, on no data
        for name in names:
            body = _slow_spans(name, 20, 900)
            conn = http.client.HTTPConnection("127.0.0.1", app.ports.http, timeout=30)
            conn.request("POST", "/v1/traces", body, {"content-type": "application/x-protobuf"})
            response = conn.getresponse()
            response.read()
            accepted = time.monotonic()
            conn.close()
            if response.status != 200:
                raise SystemExit(f"OTLP export refused: HTTP {response.status}")
            arrived = hook.wait(name, 120)
            if arrived is None:
                raise SystemExit(f"no webhook for {name} within 120 s")
            results.append(arrived - accepted)
            print(f"  trial {len(results)}: {arrived - accepted:6.2f} s", flush=True)
    finally:
        app.stop()
        hook.close()
    return results


def bench_rules(count: int) -> list[Rule]:
    """``count`` rules over the seeded services, of every rollup kind, 5-minute windows."""
    from tracehouse.bench import seed

    shapes: list[dict[str, Any]] = [
        {"kind": "latency", "condition": {"op": ">", "threshold": 1500}},
        {"kind": "error_rate", "condition": {"op": ">", "threshold": 0.2}},
        {"kind": "call_rate", "condition": {"op": "<", "threshold": 0.01}},
        {
            "kind": "latency",
            "scope": "operation",
            "group_by": ["operation"],
            "condition": {"op": ">", "threshold": 2000},
        },
        {
            "kind": "sql_latency",
            "group_by": ["fingerprint"],
            "condition": {"op": ">", "threshold": 1000},
        },
        {"kind": "sql_slow_calls", "condition": {"op": ">", "threshold": 1000}},
        {
            "kind": "error_rate",
            "scope": "edge",
            "group_by": ["target"],
            "condition": {"op": ">", "threshold": 0.5},
        },
    ]
    rules = []
    for i in range(count):
        service = seed.SERVICES[i % len(seed.SERVICES)]
        shape = dict(shapes[i % len(shapes)])
        key = "source" if shape.get("scope") == "edge" else "service"
        rules.append(
            Rule.model_validate(
                {"name": f"bench-{i:04d}", "window": "5m", "filters": {key: service}, **shape}
            )
        )
    return rules


def evaluation_pass(spans: int, rules: int, batch: int, data_dir: Path) -> tuple[float, float]:
    """Seconds of two worker passes over ``rules`` due rules (cold, warm) after seeding."""
    from tracehouse import storage
    from tracehouse.alerting.store import AlertStore
    from tracehouse.alerting.worker import AlertWorker
    from tracehouse.bench.query import seed_spans
    from tracehouse.config import Settings

    # The same engine directory as time_to_detect: chDB allows one per process.
    settings = Settings(data_dir=data_dir, log_level="WARNING")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    client = storage.connect(settings.resolved_clickhouse_url)
    try:
        storage.Migrator(client, settings.schema_options()).migrate()
        end_s = int(time.time()) // 60 * 60
        seeded = seed_spans(client, spans, 1, batch, 7, end_s)
        print(f"seeded {seeded.spans:,} spans in {seeded.seconds:.1f} s", flush=True)
        store = AlertStore(client)
        for rule in bench_rules(rules):
            store.put_rule(rule)
        worker = AlertWorker(client, None, "http://localhost:8080")
        # Evaluated as of the end of the seeded hour, however long seeding took, so that the
        # rules' windows hold the seeded spans.
        now = dt.datetime.fromtimestamp(end_s, dt.UTC)
        timings = []
        for offset in (0, 15):
            started = time.perf_counter()
            worker.evaluate_once(now + dt.timedelta(seconds=offset))
            timings.append(time.perf_counter() - started)
        health = store.health()
        failed = [h for h in health.values() if h.health != "ok"]
        if failed:
            raise SystemExit(f"{len(failed)} rules failed, e.g. {failed[0].last_error}")
        firing = sum(1 for i in store.instances() if str(i.state) == "firing")
        print(f"{len(health)} rules evaluated, all healthy; {firing} alerts firing", flush=True)
        return timings[0], timings[1]
    finally:
        client.close()


def run_alerting_bench(args: argparse.Namespace) -> int:
    """``tracehouse bench alerting``; returns the exit status (1 if a target is missed)."""
    with tempfile.TemporaryDirectory(prefix="tracehouse-bench-alerting-") as tmp:
        data_dir = Path(tmp)
        print(
            f"time to detect: interval {INTERVAL_S} s, for: {FOR_EVALUATIONS}, "
            f"{args.trials} trials …",
            flush=True,
        )
        detect = time_to_detect(args.trials, data_dir)
        print(f"evaluating {args.rules} rules over {args.spans:,} seeded spans …", flush=True)
        cold, warm = evaluation_pass(args.spans, args.rules, args.batch, data_dir)
    load = os.getloadavg()[0]
    worst = max(detect)
    print()
    print(
        f"time to detect (s): median {statistics.median(detect):.2f}, max {worst:.2f} "
        f"(target <= {TARGET_S} s)"
    )
    print(f"{args.rules} rules, one pass (s): cold {cold:.2f}, warm {warm:.2f} (target <= 15 s)")
    print(f"load average during the run: {load:.2f} on {os.cpu_count()} CPUs")
    return 0 if worst <= TARGET_S and max(cold, warm) <= 15 else 1
