"""``tracehouse bench ingest`` and ``bench query`` run end to end on small data.

Small runs only: they verify the tools, they do not measure anything (docs/performance.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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


# --- bench query ----------------------------------------------------------------------------

QUERY_ENDPOINTS = [
    ("services", "1h"),
    ("services", "24h"),
    ("operations of checkout", "1h"),
    ("operations of checkout", "24h"),
    ("topology", "1h"),
    ("topology", "24h"),
    ("sql", "1h"),
    ("sql", "24h"),
    ("top operations by p99", "1h"),
    ("top operations by p99", "24h"),
    ("trace search (a span >= 300 ms)", "1h"),
    ("trace search (a span >= 300 ms)", "24h"),
    ("trace by id", "-"),
]

# What the seeded data holds, read from the bench's engine directory by a child process
# (chDB opens one engine directory per process).
_FACTS = """
import json, sys
import clickhouse_connect
c = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
one = lambda sql: c.query(sql).result_rows[0][0]
print(json.dumps({
    "spans": one("SELECT count() FROM otel_traces"),
    "hours": one("SELECT dateDiff('minute', min(Timestamp), max(Timestamp)) / 60 "
                 "FROM otel_traces"),
    "services": one("SELECT uniq(ServiceName) FROM otel_traces"),
    "operations": one("SELECT uniq(ServiceName, SpanName) FROM otel_traces"),
    "errors": one("SELECT countIf(StatusCode = 'Error') FROM otel_traces"),
    "min_attributes": one("SELECT min(length(SpanAttributes)) FROM otel_traces"),
    "min_resource": one("SELECT min(length(ResourceAttributes)) FROM otel_traces"),
    "old_sql": one("SELECT countIf(SpanAttributes['db.statement'] != '') FROM otel_traces"),
    "new_sql": one("SELECT countIf(SpanAttributes['db.query.text'] != '') FROM otel_traces"),
    "red_calls": one("SELECT sum(Calls) FROM otel_red_1m"),
    "fingerprints": one("SELECT uniq(Fingerprint) FROM otel_db_1m"),
    "edge_types": one("SELECT arraySort(groupUniqArray(ConnectionType)) FROM otel_edges_1m"),
    "edge_hours": one("SELECT dateDiff('minute', min(Minute), max(Minute)) / 60 "
                      "FROM otel_edges_1m"),
}))
"""


def _table(stdout: str) -> list[list[str]]:
    """The rows of the final fixed-width table (split on runs of 2+ spaces)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("endpoint "))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_bench_query_times_every_endpoint_on_realistic_seeded_spans(tmp_path: Path) -> None:
    data_dir = tmp_path / "bench"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracehouse.cli",
            "bench",
            "query",
            "--spans",
            "20000",
            "--batch",
            "5000",
            "--runs",
            "2",
            "--raw-runs",
            "1",
            "--settle",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _table(result.stdout)
    endpoints = [(row[0], row[1]) for row in rows if row[0] != "slow-services"]
    assert endpoints == QUERY_ENDPOINTS, result.stdout
    for row in rows:
        api_rows, raw_rows = row[9].split("/")
        assert int(api_rows) > 0, row  # every endpoint found something
        if raw_rows != "-":  # the raw scan answers the same question: as many rows
            assert int(raw_rows) == int(api_rows), row
        assert all(float(v.replace(",", "")) > 0 for v in row[2:5]), row  # api p50 p95 min
    assert "seeding: 20,000 spans" in result.stdout

    facts = json.loads(
        subprocess.run(
            [sys.executable, "-c", _FACTS, str((data_dir / "clickhouse").resolve())],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    )
    assert facts["spans"] == facts["red_calls"] == 20_000  # the views saw every span
    assert facts["hours"] >= 24.9
    assert facts["services"] == 40
    assert facts["operations"] >= 300
    assert facts["errors"] > 0
    assert facts["min_attributes"] >= 9
    assert facts["min_resource"] >= 10
    assert facts["old_sql"] > 0 and facts["new_sql"] > 0  # both semantic conventions
    assert facts["fingerprints"] >= 100
    assert facts["edge_types"] == ["database", "messaging", "service", "user"]
    assert facts["edge_hours"] >= 24.9  # edges for the whole range, not a trailing window

    # The directory now holds spans: refused without --reuse, measured again with it.
    again = [sys.executable, "-m", "tracehouse.cli", "bench", "query", "--data-dir", str(data_dir)]
    refused = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "already holds 20,000 spans: pass --reuse" in refused.stderr
    reused = subprocess.run(
        [*again, "--reuse", "--runs", "1", "--raw-runs", "0", "--settle", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert reused.returncode == 0, reused.stdout + reused.stderr
    assert "seeding" not in reused.stdout
    assert [(row[0], row[1]) for row in _table(reused.stdout)] == [(row[0], row[1]) for row in rows]


def test_bench_query_refuses_fewer_than_24_hours() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tracehouse.cli", "bench", "query", "--hours", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "--hours must be at least 24" in result.stderr
