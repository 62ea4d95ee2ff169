"""``tracehouse bench ingest`` runs end to end and checks that nothing it sent was lost.

A small run only: this verifies the tool, it does not measure anything (docs/performance.md).
"""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("signal", ["traces", "logs"])
def test_bench_ingest_stores_everything_it_sends(signal: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracehouse.cli",
            "bench",
            "ingest",
            "--signal",
            signal,
            "--spans",
            "3000",
            "--batch",
            "500",
            "--transport",
            "both",
            "--concurrency",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        line.split() for line in result.stdout.splitlines() if line.startswith(("grpc", "http"))
    ]
    assert [row[0] for row in rows] == ["grpc", "http"]
    assert all(row[-1] == "3,000" for row in rows), result.stdout
    assert "LOST DATA" not in result.stdout
