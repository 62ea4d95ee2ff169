"""``tracehouse bench alerting`` runs end to end on small data (a child process: the bench
opens its own embedded engine, and chDB allows one per process)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tracehouse.alerting.bench import bench_rules


def test_bench_rules_are_valid_and_cover_every_rollup_kind() -> None:
    rules = bench_rules(70)
    assert len({r.name for r in rules}) == 70
    assert {r.kind for r in rules} == {
        "latency",
        "error_rate",
        "call_rate",
        "sql_latency",
        "sql_slow_calls",
    }
    assert {r.scope for r in rules} == {"service", "operation", "edge"}


@pytest.mark.slow
def test_bench_alerting_reports_both_figures() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracehouse.cli",
            "bench",
            "alerting",
            "--trials",
            "1",
            "--rules",
            "30",
            "--spans",
            "20000",
            "--batch",
            "20000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    out = done.stdout
    detect = re.search(r"time to detect \(s\): median ([\d.]+), max ([\d.]+)", out)
    assert detect, out
    assert 0 < float(detect.group(1)) < 120
    assert re.search(r"30 rules, one pass \(s\): cold [\d.]+, warm [\d.]+", out), out
    assert re.search(r"3\d rules evaluated, all healthy", out), out
