"""Shared fixtures: a real tracehouse server (gRPC + HTTP + API on loopback, port 0) over the
real embedded ClickHouse engine.

chDB allows one engine directory per process, so every server of a test session shares one
engine directory; tests keep apart by using their own service names and trace ids.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tracehouse.app import Tracehouse
from tracehouse.config import Settings
from tracehouse.ingest import Sink

DATA = Path(__file__).parent / "data"
# The OTLP specification's own JSON examples (opentelemetry-proto/examples), copied verbatim.
OTLP_EXAMPLES = DATA / "otlp-examples"


@pytest.fixture(scope="session")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('engine').resolve()}"


ServerFactory = Callable[..., Tracehouse]


@contextmanager
def _servers(engine_url: str, data_dir: Callable[[], Path]) -> Iterator[ServerFactory]:
    """A factory of servers on loopback (port 0) over the shared engine; all stopped at exit."""
    started: list[Tracehouse] = []

    def make(sink: Sink | None = None, **overrides: Any) -> Tracehouse:
        values: dict[str, Any] = {
            "data_dir": data_dir(),
            "clickhouse_url": engine_url,
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "api_port": 0,
            "insert_retry_interval_s": 0.2,
        }
        values.update(overrides)
        app = Tracehouse(Settings(**values), sink=sink)
        app.start()
        started.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(started):
            app.stop()  # idempotent


@pytest.fixture
def make_server(engine_url: str, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with settings overrides (and an optional sink); all stopped at teardown."""
    counter = itertools.count()
    with _servers(engine_url, lambda: tmp_path / f"data-{next(counter)}") as make:
        yield make


@pytest.fixture(scope="module")
def make_module_server(
    engine_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Like ``make_server``, for servers shared by one module's tests."""
    with _servers(engine_url, lambda: tmp_path_factory.mktemp("module-data")) as make:
        yield make


@pytest.fixture
def server(make_server: ServerFactory) -> Tracehouse:
    return make_server()


@pytest.fixture
def service_name() -> str:
    """A service name no other test uses, to find this test's rows."""
    return f"svc-{uuid.uuid4().hex[:12]}"


def query(app: Tracehouse, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of a parameterised query against the server's ClickHouse, once everything the
    server acknowledged is inserted (acknowledged means on disk; inserts follow)."""
    if app.pipeline is not None:
        assert app.pipeline.wait_stored(30), "acknowledged data not inserted within 30 s"
    return [tuple(row) for row in app.client.query(sql, parameters=params).result_rows]
