"""``kill -9`` of ``tracehouse serve`` under load, then a restart on the same data directory:
every span the server acknowledged before dying is stored, exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.reliability.harness import readiness, wait_for
from tracehouse.bench.soak import LoadGenerator, stored_ids_from_engine, verdict


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRACEHOUSE_DATA_DIR": str(data_dir),
        "TRACEHOUSE_HOST": "127.0.0.1",
        "TRACEHOUSE_GRPC_PORT": str(ports["grpc"]),
        "TRACEHOUSE_HTTP_PORT": str(ports["http"]),
        "TRACEHOUSE_API_PORT": str(ports["api"]),
        "TRACEHOUSE_INSERT_RETRY_INTERVAL_S": "0.2",
        "TRACEHOUSE_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tracehouse.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def ready() -> bool:
        assert process.poll() is None, process.stderr.read() if process.stderr else b""
        try:
            return readiness(ports["api"])[0] == 200
        except httpx.HTTPError:
            return False

    assert wait_for(ready, timeout_s=120), "tracehouse serve did not become ready"
    return process


def test_kill_9_under_load_then_restart_stores_every_acknowledged_span_once(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    ports = {"grpc": _free_port(), "http": _free_port(), "api": _free_port()}
    service = f"kill9-{os.urandom(4).hex()}"
    first = _serve(data_dir, ports)
    # Exporter-like clients: retry a refused or broken request (same bytes) for up to ~60 s,
    # which carries them across the restart.
    load = LoadGenerator(
        ports["http"], service, batch=20, concurrency=4, max_attempts=300, retry_pause_s=0.2
    )
    second: subprocess.Popen[bytes] | None = None
    try:
        load.start()
        # Kill while acknowledged data is spooled and inserts are under way.
        assert wait_for(lambda: len(load.stats.acked) >= 2_000), load.stats.outcomes
        first.kill()
        first.wait()
        acked_before_kill = len(load.stats.acked)

        second = _serve(data_dir, ports)
        assert wait_for(lambda: len(load.stats.acked) >= acked_before_kill + 1_000)
        stats = load.stop()
        second.terminate()  # SIGTERM: insert everything acknowledged, then exit 0
        assert second.wait(timeout=120) == 0
    finally:
        load.stop()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    assert any(o.startswith("connection:") for o in stats.outcomes), "the kill broke nothing"
    assert stats.error_count == 0, stats.errors
    result = verdict(stats, stored_ids_from_engine(data_dir, service))
    print(f"{result} outcomes={dict(stats.outcomes)}")  # the figures, with pytest -s
    assert result.ok, result
    assert result.acked >= 3_000
