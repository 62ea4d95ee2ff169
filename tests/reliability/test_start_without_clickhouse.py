"""An ingest node starts while its ClickHouse server is unreachable: it comes up, acknowledges
OTLP into its spool, says why it is not ready, answers queries with 503 instead of 500, and
everything it acknowledged is stored exactly once when the spool reaches a ClickHouse.

The server URL points at a loopback port that is bound but never listens (connection refused,
as in test_clickhouse_outage.py). The second half starts an embedded-engine server on the same
data directory: its spool is replayed there (one engine per process: no ClickHouse server runs
in these tests).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import ServerFactory
from tests.reliability.harness import closed_port, readiness, stored_ids, wait_for
from tracehouse import storage
from tracehouse.bench.soak import LoadGenerator, verdict
from tracehouse.storage.client import LazyClient, is_unreachable, unreachable_reason


def test_ingest_starts_without_clickhouse_and_its_spool_is_stored_exactly_once_later(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    with ExitStack() as stack:
        port = stack.enter_context(closed_port())
        app = make_server(
            clickhouse_url=f"http://127.0.0.1:{port}/default",
            drain_timeout_s=0.5,
            insert_retry_interval_s=0.2,
        )
        api = f"http://127.0.0.1:{app.ports.api}"

        # OTLP/HTTP: raw protobuf from the load generator (every span unique, retried on 503)…
        load = LoadGenerator(app.ports.http, service_name, batch=20, concurrency=2)
        load.run_for(1.0)
        assert len(load.stats.acked) >= 20, load.stats.outcomes
        assert load.stats.error_count == 0, load.stats.errors
        # …and the real SDK exporter, whose export must succeed (acknowledged into the spool).
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        finished = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(finished))
        with provider.get_tracer("test").start_as_current_span("sdk-span"):
            pass
        (sdk_span,) = finished.get_finished_spans()
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/traces")
        assert exporter.export([sdk_span]) is SpanExportResult.SUCCESS
        context = sdk_span.get_span_context()
        assert context is not None
        sdk_key = (f"{context.trace_id:032x}", f"{context.span_id:016x}")

        status, reason = readiness(app.ports.api)
        assert status == 503
        assert reason.startswith("ClickHouse unreachable: ")
        assert "Connection refused" in reason
        assert reason.endswith("; ingest accepting into the spool")
        assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
        for path in ("/api/v1/services", f"/api/v1/traces?service={service_name}"):
            response = httpx.get(f"{api}{path}", timeout=30)
            assert response.status_code == 503, (path, response.text)
            assert "ClickHouse unreachable" in response.json()["detail"]
            assert response.headers["retry-after"] == "5"
        assert app.alerting is None and app.edges is None  # the worker jobs wait for storage
        assert list(app.settings.resolved_spool_dir.glob("*.spool"))
        data_dir = app.settings.data_dir
        app.stop()  # the spool stays: nothing was inserted into tables that do not exist

    restarted = make_server(data_dir=data_dir, clickhouse_url=engine_url)
    stored = stored_ids(restarted, service_name)
    assert stored.pop(sdk_key) == 1  # the SDK's span, once
    result = verdict(load.stats, stored)
    print(f"{result} outcomes={dict(load.stats.outcomes)}")  # the figures, with pytest -s
    assert result.ok, result  # every acknowledged span once, nothing else
    assert result.stored == result.acked == len(load.stats.acked)
    assert not list(restarted.settings.resolved_spool_dir.glob("*.spool"))


def test_lazy_client_connects_on_first_use_and_retries_after_a_refusal() -> None:
    with closed_port() as port:
        attempts: list[int] = []

        def connect() -> object:
            attempts.append(port)
            return storage.connect(f"http://127.0.0.1:{port}/default")

        client = LazyClient(connect)
        assert attempts == [] and not client.connected  # nothing at construction
        for _ in range(2):
            with pytest.raises(Exception) as caught:
                client.command("SELECT 1")
            assert is_unreachable(caught.value), caught.value
        assert len(attempts) == 2  # every use tries again
        assert not client.connected
        client.close()  # nothing to close yet
        assert unreachable_reason(caught.value) == "[Errno 111] Connection refused"


def test_cli_serve_stays_up_without_clickhouse(tmp_path: Path) -> None:
    """``tracehouse serve`` against an unreachable server URL: up, alive, not ready."""
    with closed_port() as port:
        env = {
            **os.environ,
            "TRACEHOUSE_DRAIN_TIMEOUT_S": "0.5",
            "TRACEHOUSE_INSERT_RETRY_INTERVAL_S": "0.1",
            "TRACEHOUSE_LOG_LEVEL": "INFO",
        }
        command = [sys.executable, "-m", "tracehouse.cli", "serve", "--data-dir", str(tmp_path)]
        command += ["--clickhouse-url", f"http://127.0.0.1:{port}/default"]
        command += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"]
        api_port = _free_port()
        command += ["--api-port", str(api_port)]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            assert wait_for(lambda: _answers(api_port) or process.poll() is not None, 120)
            assert process.poll() is None, process.communicate()[0]
            assert httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=10).json() == {
                "status": "ok"
            }
            for _ in range(3):
                status, reason = readiness(api_port)
                assert status == 503 and "ClickHouse unreachable" in reason
                services = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/services", timeout=30)
                assert services.status_code == 503  # each one tried to connect, and failed
        finally:
            process.terminate()
            output = process.communicate(timeout=120)[0]
        assert process.returncode == 0, output
        # One warning for the state, not one per retry or per request.
        assert output.count("unreachable at start") == 1, output
        assert output.count("Connection refused") == 1, output


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    except httpx.HTTPError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
