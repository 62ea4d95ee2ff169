"""The CI-sized ``tracehouse bench soak``: 20 s at 80 % of the measured maximum against a real
``tracehouse serve``: no errors, nothing lost, nothing stored twice (timing is only reported;
``tracehouse bench soak --minutes 10`` is the full run, docs/reliability.md)."""

from __future__ import annotations

from tracehouse.bench.soak import soak


def test_short_soak_at_80_percent_loses_nothing_and_has_no_errors() -> None:
    result = soak(20, fraction=0.8, calibrate_s=5, concurrency=4, batch=50, sample_s=2)
    print(result.verdict, f"max {result.max_spans_per_s:.0f}/s", result.rss_curve)  # pytest -s
    assert result.stats.error_count == 0, result.stats.errors
    assert result.stats.connection_failures == 0, result.stats.outcomes
    assert result.verdict.ok, result.verdict
    assert result.verdict.acked > 0
    assert result.verdict.stored == result.verdict.acked == result.verdict.sent
    assert len(result.rss_curve) >= 5  # the curve was sampled over the soak
