"""Nothing acknowledged is lost: failed inserts go to the spool and are replayed exactly once,
retried requests are not stored twice, and overload is refused with a retryable status."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import log_request, trace_request
from tracehouse import storage
from tracehouse.app import Tracehouse
from tracehouse.model import RowBatch

PROTO = {"Content-Type": "application/x-protobuf"}


class FlakySink:
    """The real ClickHouse writer behind a switch that makes inserts fail, like an outage."""

    def __init__(self, client: Any) -> None:
        self._writer = storage.ClickHouseWriter(client)
        self.failing = threading.Event()
        self.delay_s = 0.0
        self.attempts = 0

    def insert(self, batch: RowBatch, dedup_token: str | None = None) -> None:
        self.attempts += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.failing.is_set():
            raise ConnectionError("injected: ClickHouse unreachable")
        self._writer.insert(batch, dedup_token)


def _flaky(engine_url: str) -> FlakySink:
    return FlakySink(storage.connect(engine_url))


def _count(app: Tracehouse, table: str, service: str) -> int:
    sql = f"SELECT count() FROM {table} WHERE ServiceName = {{s:String}}"
    return int(query(app, sql, s=service)[0][0])


def _post(app: Tracehouse, body: bytes, path: str = "/v1/traces") -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{app.ports.http}{path}", content=body, headers=PROTO, timeout=30
    )


def _wait_for(predicate: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_outage_spools_and_recovery_stores_everything_once(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    sink = _flaky(engine_url)
    app = make_server(sink=sink)
    sink.failing.set()
    for _ in range(5):
        assert (
            _post(app, trace_request(service_name, spans=4).SerializeToString()).status_code == 200
        )
    assert (
        _post(app, log_request(service_name, 3).SerializeToString(), "/v1/logs").status_code == 200
    )
    assert _count(app, "otel_traces", service_name) == 0
    assert list(app.settings.resolved_spool_dir.glob("*.spool"))
    ready = httpx.get(f"http://127.0.0.1:{app.ports.api}/readyz")
    assert ready.status_code == 503
    assert "spooling" in ready.json()["reason"]

    sink.failing.clear()
    assert _wait_for(lambda: _count(app, "otel_traces", service_name) >= 20)
    assert _wait_for(lambda: not list(app.settings.resolved_spool_dir.glob("*.spool")))
    assert _count(app, "otel_traces", service_name) == 20
    assert _count(app, "otel_logs", service_name) == 3
    assert httpx.get(f"http://127.0.0.1:{app.ports.api}/readyz").status_code == 200


def test_spool_left_by_a_stopped_server_is_replayed_at_start(
    make_server: ServerFactory, engine_url: str, service_name: str, tmp_path: Any
) -> None:
    sink = _flaky(engine_url)
    sink.failing.set()
    data_dir = tmp_path / "restart"
    first = make_server(sink=sink, data_dir=data_dir, spool_replay_interval_s=3600)
    assert _post(first, trace_request(service_name, spans=7).SerializeToString()).status_code == 200
    first.stop()
    assert len(list((data_dir / "spool").glob("*.spool"))) == 1

    second = make_server(data_dir=data_dir)
    assert _count(second, "otel_traces", service_name) == 7
    assert not list((data_dir / "spool").glob("*.spool"))


def test_replay_of_an_insert_that_had_landed_adds_nothing(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    """An insert that reached ClickHouse but whose answer was lost is spooled; its replay
    carries the same deduplication token, so the rows are stored once."""

    class LostAnswerSink(FlakySink):
        def insert(self, batch: RowBatch, dedup_token: str | None = None) -> None:
            self._writer.insert(batch, dedup_token)
            if self.failing.is_set():
                self.failing.clear()
                raise TimeoutError("injected: answer lost after the insert landed")

    sink = LostAnswerSink(storage.connect(engine_url))
    sink.failing.set()
    app = make_server(sink=sink)
    assert _post(app, trace_request(service_name, spans=5).SerializeToString()).status_code == 200
    assert _wait_for(lambda: not list(app.settings.resolved_spool_dir.glob("*.spool")))
    assert _count(app, "otel_traces", service_name) == 5


def test_retried_request_is_not_stored_twice(server: Tracehouse, service_name: str) -> None:
    body = trace_request(service_name, spans=4).SerializeToString()
    assert _post(server, body).status_code == 200
    assert _post(server, body).status_code == 200
    channel = grpc.insecure_channel(f"127.0.0.1:{server.ports.grpc}")
    export = channel.unary_unary(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        request_serializer=None,
        response_deserializer=None,
    )
    export(body, timeout=10)
    channel.close()
    assert _count(server, "otel_traces", service_name) == 4


def test_overload_is_refused_with_retryable_status_and_nothing_acknowledged_is_lost(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    sink = _flaky(engine_url)
    sink.delay_s = 0.3
    app = make_server(sink=sink, queue_max_rows=20, batch_max_rows=10)
    bodies = [trace_request(service_name, spans=10).SerializeToString() for _ in range(12)]
    with ThreadPoolExecutor(12) as pool:
        http_results = list(pool.map(lambda b: _post(app, b), bodies[:6]))
        grpc_results = list(pool.map(lambda b: _grpc_export(app, b), bodies[6:]))

    refused = [r for r in http_results if r.status_code != 200]
    assert refused, "a queue of 20 rows cannot hold 60 rows at once"
    for response in refused:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
    grpc_refused = [r for r in grpc_results if r is not None]
    assert grpc_refused
    for code, retry_delay in grpc_refused:
        assert code == grpc.StatusCode.UNAVAILABLE
        assert retry_delay >= 1
    accepted = sum(r.status_code == 200 for r in http_results) + sum(
        r is None for r in grpc_results
    )
    assert _count(app, "otel_traces", service_name) == 10 * accepted


def _grpc_export(app: Tracehouse, body: bytes) -> tuple[grpc.StatusCode, int] | None:
    """None on success; else the status code and the RetryInfo delay in seconds."""
    with grpc.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        export = stub.Export.with_call
        request = type(trace_request("x", 0)).FromString(body)
        try:
            export(request, timeout=30)
        except grpc.RpcError as err:
            delay = 0
            for key, value in err.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    status = status_pb2.Status.FromString(value)
                    assert status.code == code_pb2.UNAVAILABLE
                    for detail in status.details:
                        info = error_details_pb2.RetryInfo()
                        if detail.Unpack(info):
                            delay = info.retry_delay.seconds
            return err.code(), delay
    return None


def test_sigterm_style_stop_flushes_everything_accepted(
    make_server: ServerFactory, service_name: str
) -> None:
    app = make_server(batch_max_wait_ms=60_000, batch_max_rows=1_000_000)
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(_post, app, trace_request(service_name, spans=5).SerializeToString())
            for _ in range(4)
        ]
        assert _wait_for(lambda: app.pipeline is not None and _queued(app) == 20, 10)
        client = storage.connect(app.settings.resolved_clickhouse_url)
        app.stop()
        assert all(f.result().status_code == 200 for f in futures)
    rows = client.query(
        "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}",
        parameters={"s": service_name},
    ).result_rows
    assert rows[0][0] == 20


def _queued(app: Tracehouse) -> int:
    text = httpx.get(f"http://127.0.0.1:{app.ports.api}/metrics").text
    for line in text.splitlines():
        if line.startswith('tracehouse_ingest_queue_rows{signal="traces"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0
