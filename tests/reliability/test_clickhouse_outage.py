"""ClickHouse failing for a while under load: ingest keeps acknowledging into the spool (or
refuses with a retryable status), readiness says degraded, and after recovery every
acknowledged span is stored exactly once (sent == stored, by TraceId+SpanId)."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.reliability.harness import closed_port, readiness, stored_ids, wait_for
from tracehouse import storage
from tracehouse.bench.soak import LoadGenerator, verdict
from tracehouse.model import Signal


class OutageSink:
    """The real ClickHouse writer; while ``down`` is set every insert fails as in an outage.

    ``mode="injected"`` raises at once (embedded mode: the engine is in-process and cannot be
    made unreachable); ``mode="closed-port"`` opens a real client to a ClickHouse server URL on
    a loopback port nothing listens on, so the failure is the client's own connection error.
    """

    def __init__(self, engine_url: str, mode: str, server_port: int) -> None:
        self._writer = storage.ClickHouseWriter(
            lambda: storage.connect(engine_url), embedded=True, max_value_length=131072
        )
        self._mode = mode
        self._server_url = f"http://127.0.0.1:{server_port}/default"
        self.down = threading.Event()
        self.failures = 0

    def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None) -> None:
        if self.down.is_set():
            self.failures += 1
            if self._mode == "injected":
                raise ConnectionError("injected: ClickHouse insert failed")
            storage.ClickHouseWriter(
                lambda: storage.connect(self._server_url), embedded=False, max_value_length=1
            ).insert(signal, files, dedup_token)
            raise AssertionError("a ClickHouse server answered on a closed port")
        self._writer.insert(signal, files, dedup_token)


@pytest.mark.parametrize("mode", ["injected", "closed-port"])
def test_acknowledged_spans_survive_an_outage_under_load_exactly_once(
    make_server: ServerFactory, engine_url: str, service_name: str, mode: str
) -> None:
    with ExitStack() as stack:
        _outage_under_load(stack, make_server, engine_url, service_name, mode)


def _outage_under_load(
    stack: ExitStack, make_server: ServerFactory, engine_url: str, service_name: str, mode: str
) -> None:
    port = stack.enter_context(closed_port())
    sink = OutageSink(engine_url, mode, port)
    app = make_server(sink=sink, insert_retry_interval_s=0.2, batch_max_rows=2_000)
    load = LoadGenerator(app.ports.http, service_name, batch=20, concurrency=3).start()
    try:
        assert wait_for(lambda: len(load.stats.acked) >= 300), load.stats.outcomes

        sink.down.set()
        assert wait_for(lambda: readiness(app.ports.api)[0] == 503), "readiness stayed 200"
        assert "inserts failing" in readiness(app.ports.api)[1]
        acked_at_outage = len(load.stats.acked)
        # Ingest goes on acknowledging while ClickHouse is down: the spool absorbs it.
        assert wait_for(lambda: len(load.stats.acked) >= acked_at_outage + 1_000)
        assert sink.failures > 0
        assert list(app.settings.resolved_spool_dir.glob("*.spool"))

        sink.down.clear()
        assert wait_for(lambda: readiness(app.ports.api)[0] == 200), "still degraded"
        acked_at_recovery = len(load.stats.acked)
        assert wait_for(lambda: len(load.stats.acked) >= acked_at_recovery + 300)
    finally:
        stats = load.stop()

    assert stats.error_count == 0, stats.errors
    result = verdict(stats, stored_ids(app, service_name))
    print(f"{result} outcomes={dict(stats.outcomes)}")  # the figures, with pytest -s
    assert result.ok, result
    assert result.stored >= result.acked >= 1_600
