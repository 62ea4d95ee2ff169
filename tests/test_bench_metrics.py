"""``tracehouse bench metrics`` runs end to end on small data.

A small run only: it verifies the tool and the figures it prints, it does not measure anything
(docs/performance.md has the measurements).
"""

from __future__ import annotations

import re
import subprocess
import sys


def _table(stdout: str, first_heading: str) -> list[list[str]]:
    """The rows of the fixed-width table whose heading starts with ``first_heading``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_heading))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_bench_metrics_ingests_over_both_transports_and_times_the_queries() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracehouse.cli",
            "bench",
            "metrics",
            "--points",
            "3000",
            "--series",
            "40",
            "--batch",
            "240",
            "--concurrency",
            "4",
            "--transport",
            "both",
            "--query-series",
            "12",
            "--runs",
            "2",
            "--markdown",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    ingest = _table(out, "transport ")
    assert [row[0] for row in ingest] == ["grpc", "http"], out
    for row in ingest:
        points_per_s, acked_per_s, seconds, cpu, rss = (_number(v) for v in row[1:6])
        assert points_per_s > 0 and acked_per_s >= points_per_s and seconds > 0, row
        assert cpu > 0 and rss > 0, row
        assert row[6] == "3,000", row  # every point sent is stored, over all three tables
    assert "LOST DATA" not in out

    queries = _table(out, "query (1 h, 10 s step)")
    assert [row[0] for row in queries] == [
        "gauge avg by instance",
        "gauge avg, one group",
        "sum rate by instance",
        "sum rate, one group",
        "histogram p95 by instance",
        "histogram p95, one group",
    ], out
    for row in queries:
        assert all(_number(v) > 0 for v in row[1:4]), row  # p50, p95, min in ms
        by_instance = "by instance" in row[0]
        assert _number(row[4]) == (12 if by_instance else 1), row  # series answered
        # A 1-hour window at 10 s: 360 buckets per series, every one with a value.
        assert _number(row[5]) == 360 * _number(row[4]), row
        assert row[6] in ("ok", "MISSED"), row  # a verdict, never FAILED or EMPTY

    assert "| transport | points/s | acked/s |" in out  # --markdown
    assert "| query (1 h, 10 s step) | p50 ms |" in out
    assert "machine: " in out


def test_bench_metrics_refuses_bad_sizes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli", "bench", "metrics", "--points", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--points must be at least 6" in result.stderr
