"""Nothing acknowledged is lost: failed inserts go to the spool and are replayed exactly once,
retried requests are not stored twice, and overload is refused with a retryable status."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import log_request, trace_request
from tracehouse import storage
from tracehouse.app import Tracehouse
from tracehouse.ingest.spool import unframe
from tracehouse.model import Signal

PROTO = {"Content-Type": "application/x-protobuf"}


class FlakySink:
    """The real ClickHouse writer behind a switch that makes inserts fail, like an outage."""

    def __init__(self, engine_url: str) -> None:
        self._writer = storage.ClickHouseWriter(
            lambda: storage.connect(engine_url), embedded=True, max_value_length=131072
        )
        self.failing = threading.Event()
        self.delay_s = 0.0
        self.attempts = 0

    def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None) -> None:
        self.attempts += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.failing.is_set():
            raise ConnectionError("injected: ClickHouse unreachable")
        self._writer.insert(signal, files, dedup_token)


def _count(app: Tracehouse, table: str, service: str) -> int:
    """Rows stored now (not waiting for pending inserts, unlike conftest.query)."""
    sql = f"SELECT count() FROM {table} WHERE ServiceName = {{s:String}}"
    return int(app.client.query(sql, parameters={"s": service}).result_rows[0][0])


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
    sink = FlakySink(engine_url)
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
    assert _wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{app.ports.api}/readyz").status_code == 503
    )
    ready = httpx.get(f"http://127.0.0.1:{app.ports.api}/readyz")
    assert "inserts failing" in ready.json()["reason"]

    sink.failing.clear()
    assert _wait_for(lambda: _count(app, "otel_traces", service_name) >= 20)
    assert _wait_for(lambda: not list(app.settings.resolved_spool_dir.glob("*.spool")))
    assert _count(app, "otel_traces", service_name) == 20
    assert _count(app, "otel_logs", service_name) == 3
    assert httpx.get(f"http://127.0.0.1:{app.ports.api}/readyz").status_code == 200


def test_spool_left_by_a_stopped_server_is_replayed_at_start(
    make_server: ServerFactory, engine_url: str, service_name: str, tmp_path: Any
) -> None:
    sink = FlakySink(engine_url)
    sink.failing.set()
    data_dir = tmp_path / "restart"
    first = make_server(sink=sink, data_dir=data_dir, drain_timeout_s=0)
    assert _post(first, trace_request(service_name, spans=7).SerializeToString()).status_code == 200
    assert _wait_for(lambda: sink.attempts > 0)  # a group was formed and its insert failed
    first.stop()
    assert len(list((data_dir / "spool").glob("*.spool"))) == 1
    assert len(list((data_dir / "spool").glob("*.group"))) == 1

    second = make_server(data_dir=data_dir)
    assert _wait_for(lambda: _count(second, "otel_traces", service_name) == 7)
    spool = data_dir / "spool"
    assert _wait_for(lambda: not [*spool.glob("*.spool"), *spool.glob("*.group")])
    assert _count(second, "otel_traces", service_name) == 7


def test_replay_of_an_insert_that_had_landed_adds_nothing(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    """An insert that reached ClickHouse but whose answer was lost is retried under the same
    deduplication token, so the rows are stored once."""

    class LostAnswerSink(FlakySink):
        def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None) -> None:
            self._writer.insert(signal, files, dedup_token)
            if self.failing.is_set():
                self.failing.clear()
                raise TimeoutError("injected: answer lost after the insert landed")

    sink = LostAnswerSink(engine_url)
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
    assert query(
        server, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service_name
    ) == [(4,)]


def test_request_retried_after_a_restart_is_not_stored_twice(
    make_server: ServerFactory, service_name: str, tmp_path: Path
) -> None:
    """The exporter lost the answer and retries against the restarted process: the key journal
    beside the spool remembers the request although its spool file was inserted and removed."""
    data_dir = tmp_path / "restart"
    body = trace_request(service_name, spans=6).SerializeToString()
    first = make_server(data_dir=data_dir)
    assert _post(first, body).status_code == 200
    assert _wait_for(lambda: _count(first, "otel_traces", service_name) == 6)
    first.stop()
    assert not list((data_dir / "spool").glob("*.spool"))

    second = make_server(data_dir=data_dir)
    assert _post(second, body).status_code == 200
    assert second.pipeline is not None and second.pipeline.wait_stored(20)
    assert _count(second, "otel_traces", service_name) == 6


def test_request_still_in_the_spool_is_recognised_without_the_journal(
    make_server: ServerFactory, engine_url: str, service_name: str, tmp_path: Path
) -> None:
    """A crash between the spool write and the journal append: the spooled request itself
    proves it was accepted, so its retry adds nothing."""
    sink = FlakySink(engine_url)
    sink.failing.set()
    data_dir = tmp_path / "crash"
    body = trace_request(service_name, spans=3).SerializeToString()
    first = make_server(sink=sink, data_dir=data_dir, drain_timeout_s=0)
    assert _post(first, body).status_code == 200
    first.stop()
    for journal in (data_dir / "spool").glob("accepted.keys*"):
        journal.unlink()

    second = make_server(data_dir=data_dir)
    assert _post(second, body).status_code == 200
    assert _wait_for(lambda: not list((data_dir / "spool").glob("*.spool")))
    assert second.pipeline is not None and second.pipeline.wait_stored(20)
    assert _count(second, "otel_traces", service_name) == 3


def test_full_spool_is_refused_with_retryable_status_and_nothing_acknowledged_is_lost(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    sink = FlakySink(engine_url)
    sink.failing.set()
    body_size = len(trace_request(service_name, spans=10).SerializeToString())
    app = make_server(sink=sink, spool_max_bytes=body_size * 5)
    http_results = [
        _post(app, trace_request(service_name, spans=10).SerializeToString()) for _ in range(8)
    ]
    grpc_results = [
        _grpc_export(app, trace_request(service_name, spans=10).SerializeToString())
        for _ in range(3)
    ]

    accepted = [r for r in http_results if r.status_code == 200]
    refused = [r for r in http_results if r.status_code != 200]
    assert len(accepted) == 4, "a spool of five request sizes holds four (each file has framing)"
    for response in refused:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert "spool is full" in _decode_status(response).message
    assert grpc_results and all(r is not None for r in grpc_results)
    for code, retry_delay in grpc_results:  # type: ignore[misc]
        assert code == grpc.StatusCode.UNAVAILABLE
        assert retry_delay >= 1

    sink.failing.clear()
    assert _wait_for(lambda: _count(app, "otel_traces", service_name) == 40)
    assert _post(app, trace_request(service_name, spans=10).SerializeToString()).status_code == 200
    assert _wait_for(lambda: _count(app, "otel_traces", service_name) == 50)


def _decode_status(response: httpx.Response) -> status_pb2.Status:
    return status_pb2.Status.FromString(response.content)


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


def test_stop_inserts_everything_acknowledged(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    sink = FlakySink(engine_url)
    sink.delay_s = 2.0  # inserts lag well behind the acknowledgements, even on a loaded machine
    app = make_server(sink=sink)
    with ThreadPoolExecutor(4) as pool:
        bodies = [trace_request(service_name, spans=5).SerializeToString() for _ in range(4)]
        assert all(r.status_code == 200 for r in pool.map(lambda b: _post(app, b), bodies))
    client = storage.connect(app.settings.resolved_clickhouse_url)
    assert _count(app, "otel_traces", service_name) < 20
    app.stop()
    rows = client.query(
        "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}",
        parameters={"s": service_name},
    ).result_rows
    assert rows[0][0] == 20
    assert not list(app.settings.resolved_spool_dir.glob("*.spool"))


def _bool_127_request(service: str) -> bytes:
    """One span with the attribute ``flag`` = true sent as the varint 127: the protobuf runtime
    reads it as true, ClickHouse's Protobuf input refuses it."""
    request = trace_request(service, spans=1)
    attribute = request.resource_spans[0].scope_spans[0].spans[0].attributes.add()
    attribute.key = "flag"
    attribute.value.bool_value = True
    canonical = attribute.value.SerializeToString()
    assert canonical == b"\x10\x01"
    body = request.SerializeToString()
    assert body.count(b"\x04flag\x12\x02\x10\x01") == 1
    return body.replace(b"\x04flag\x12\x02\x10\x01", b"\x04flag\x12\x02\x10\x7f")


def _post_together(app: Tracehouse, *bodies: bytes) -> list[int]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return [r.status_code for r in pool.map(lambda body: _post(app, body), bodies)]


def test_a_request_clickhouse_cannot_read_is_stored_from_its_re_encoding(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    """Acknowledged means stored: a request the receiver validated but ClickHouse refuses is
    re-encoded as the protobuf runtime read it, and the requests written with it still land."""
    app = make_server(spool_flush_ms=300)  # both requests go into one spool file
    hostile = _bool_127_request(service_name)
    good = trace_request(service_name, spans=5).SerializeToString()
    assert _post_together(app, good, hostile) == [200, 200]
    assert app.pipeline is not None and app.pipeline.wait_stored(30)

    assert _count(app, "otel_traces", service_name) == 6
    flags = app.client.query(
        "SELECT SpanAttributes['flag'] FROM otel_traces "
        "WHERE ServiceName = {s:String} AND mapContains(SpanAttributes, 'flag')",
        parameters={"s": service_name},
    ).result_rows
    assert flags == [("true",)]
    assert not list(app.settings.resolved_spool_dir.glob("*.failed"))


def test_only_the_request_clickhouse_refuses_is_set_aside(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    """A refused spool file is narrowed down request by request: the other clients' requests
    written in the same flush are stored, the refused one is kept alone as ``*.failed``."""

    class PoisonSink(FlakySink):
        def __init__(self, engine_url: str) -> None:
            super().__init__(engine_url)
            self.release = threading.Event()

        def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None):
            self.release.wait(30)
            if any(b"poison-pill" in path.read_bytes() for path in files):
                raise storage.RefusedData("injected: ClickHouse cannot read this request")
            self._writer.insert(signal, files, dedup_token)

    sink = PoisonSink(engine_url)
    app = make_server(sink=sink, spool_flush_ms=300)
    spool = app.settings.resolved_spool_dir
    poison = trace_request(f"{service_name}-poison-pill", spans=2).SerializeToString()
    good = [trace_request(service_name, spans=n).SerializeToString() for n in (3, 4)]
    assert _post_together(app, good[0], poison, good[1]) == [200, 200, 200]
    (written,) = spool.glob("*.spool")  # one flush: the three requests in one file
    assert len(unframe(written.read_bytes())) == 3
    sink.release.set()
    assert _wait_for(lambda: _count(app, "otel_traces", service_name) == 7)
    assert _wait_for(lambda: not list(spool.glob("*.spool")))
    (failed,) = spool.glob("*.failed")
    assert unframe(failed.read_bytes()) == [poison]
    assert _count(app, "otel_traces", service_name) == 7
