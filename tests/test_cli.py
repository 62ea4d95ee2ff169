"""The ``tracehouse`` command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ingest.otlp_factory import log_request, trace_request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tracehouse(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "tracehouse.cli", *args]


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    ports = {"grpc": _free_port(), "http": _free_port(), "api": _free_port()}
    env = {
        **os.environ,
        "TRACEHOUSE_DATA_DIR": str(tmp_path / "data"),
        "TRACEHOUSE_HOST": "127.0.0.1",
        "TRACEHOUSE_GRPC_PORT": str(ports["grpc"]),
        "TRACEHOUSE_HTTP_PORT": str(ports["http"]),
        "TRACEHOUSE_API_PORT": str(ports["api"]),
    }
    process = subprocess.Popen(
        _tracehouse("serve"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{ports['api']}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"tracehouse serve did not become ready: {process.stderr.read()!r}")
    yield process, ports, tmp_path / "data"
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serve_answers_on_all_ports_and_sigterm_flushes_what_it_accepted(served) -> None:  # type: ignore[no-untyped-def]
    process, ports, data_dir = served
    api = f"http://127.0.0.1:{ports['api']}"
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    assert "tracehouse_ingest_queue_rows" in httpx.get(f"{api}/metrics").text
    with socket.create_connection(("127.0.0.1", ports["grpc"]), timeout=5):
        pass

    import threading

    results: list[int] = []

    def post(path: str, body: bytes) -> None:
        response = httpx.post(
            f"http://127.0.0.1:{ports['http']}{path}",
            content=body,
            headers={"Content-Type": "application/x-protobuf"},
            timeout=60,
        )
        results.append(response.status_code)

    senders = [
        threading.Thread(
            target=post, args=("/v1/traces", trace_request("cli", 5).SerializeToString())
        ),
        threading.Thread(target=post, args=("/v1/logs", log_request("cli", 4).SerializeToString())),
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    assert results == [200, 200]  # acknowledged: on disk, maybe not yet in ClickHouse
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0

    assert _count_rows(data_dir, "otel_traces") == 5
    assert _count_rows(data_dir, "otel_logs") == 4


def _count_rows(data_dir: Path, table: str) -> int:
    """Rows of ``table`` in the server's engine, read from another process (one chDB engine
    directory per process: this one already has the test session's)."""
    script = (
        "import sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
        "print(c.query('SELECT count() FROM ' + sys.argv[2]).result_rows[0][0])\n"
    )
    dsn = f"chdb://{(data_dir / 'clickhouse').resolve()}"
    out = subprocess.run(
        [sys.executable, "-c", script, dsn, table], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_migrate_print_shows_cluster_ddl() -> None:
    out = subprocess.run(
        _tracehouse("migrate", "--print", "--cluster", "prod"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CREATE TABLE IF NOT EXISTS otel_traces_local ON CLUSTER `prod`" in out
    assert (
        "ENGINE = Distributed(`prod`, currentDatabase(), otel_traces_local, cityHash64(TraceId))"
        in out
    )


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    env = {**os.environ, "TRACEHOUSE_MAX_REQUEST_BYTES": "-5"}
    result = subprocess.run(
        _tracehouse("serve", "--data-dir", str(tmp_path)), env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "max_request_bytes" in result.stderr


def test_busy_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            _tracehouse(
                "serve",
                "--data-dir",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--api-port",
                str(port),
                "--grpc-port",
                str(_free_port()),
                "--http-port",
                str(_free_port()),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr


def test_unusable_clickhouse_url_is_reported(tmp_path: Path) -> None:
    result = subprocess.run(
        _tracehouse("serve", "--data-dir", str(tmp_path), "--clickhouse-url", "ftp://nowhere"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "chdb:///abs/dir" in result.stderr
