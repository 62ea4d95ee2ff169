"""``tracehouse bench ingest --engine-only``: the engine profile runs every stage on small data.

It verifies the tool, not the figures (docs/performance.md has those).
"""

from __future__ import annotations

import subprocess
import sys

_STAGES = (
    "one statement (512-item request)",
    "parse + flatten (Null table)",
    "+ store, no views",
    "+ views: the pipeline's insert",
    "raw columnar insert (+ views)",
)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tracehouse.cli", "bench", "ingest", "--engine-only"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)


def test_engine_profile_prints_every_stage_with_its_cpu() -> None:
    result = _bench("--spans", "2048", "--batch", "512", "--engine-batch", "1024")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {
        stage: line
        for line in result.stdout.splitlines()
        for stage in _STAGES
        if line.startswith(stage)
    }
    assert list(lines) == list(_STAGES), result.stdout
    for stage, line in lines.items():
        rate, cpu, per_100k = line[len(stage) :].split()
        assert float(rate.replace(",", "")) > 0, line
        assert float(cpu) > 0, line
        assert float(per_100k) > 0, line
    assert "sending over" not in result.stdout  # --engine-only starts no server


def test_engine_batch_must_be_positive() -> None:
    result = _bench("--spans", "512", "--engine-batch", "0")
    assert result.returncode == 2
    assert "--engine-batch" in result.stdout
