"""What the readers of the rollups (``otel_red_1m``/``_1h``, ``otel_db_1m``/``_1h``) share: the
minutes a time range covers, reading it from both tiers, span kinds, and turning nanosecond
aggregates into milliseconds.

Rollup rows are whole minutes, so a range reads every minute it overlaps: from ``start``
rounded down to ``end`` rounded up. Rates are per second of that window, and the current
minute counts only up to now (it has not happened yet beyond that).

A range of hours reads its whole hours from the hourly tables (migration 0013) and only the
minutes before the first and after the last whole hour from the minute tables: a day is 24
hourly rows per series instead of 1,440 (``RED_IN_WINDOW``, ``DB_IN_WINDOW``;
``SERVICES_IN_WINDOW`` per service and kind, migration 0015).

Overviews (``overview_window``) read a range of ``HOURLY_FROM_S`` (6 hours) or more at hour
resolution: widened to whole hours (start rounded down, end up), so it reads the hourly
tables only. Merging the t-digest states of the minutes at the ends cost as much as the whole
hours between them (decision 0022); a day's view does not need its ends to the minute, and
the answer's ``start`` and ``end`` say what was counted. Readers comparing a window with a
baseline read minutes only and keep minute precision (``minute_window``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracehouse.query.params import TimeRange, invalid
from tracehouse.topology.edges import edges_in

_MINUTE = 60
_HOUR = 3600
HOURLY_FROM_S = 6 * _HOUR
_NS_PER_MS = 1_000_000

# For reading a window and its baseline in one pass: ``WITH {WINDOW_AND_BASELINE}`` names the
# conditions ``Current`` and ``Base`` on ``Minute`` (parameters start, end, base_start,
# base_end, epoch seconds: ``window_and_baseline``).
WINDOW_AND_BASELINE = """
    Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})
    AS Current,
    Minute >= fromUnixTimestamp({base_start:Int64}) AND Minute < fromUnixTimestamp({base_end:Int64})
    AS Base"""


# The parameters of a baseline range carry this prefix (``base_start``, ``base_hours_start``,
# …: ``MinuteWindow.parameters(BASE)``).
BASE = "base_"


def whole_hours(prefix: str = "") -> tuple[str, str]:
    """Conditions on ``Minute`` and on ``Hour`` that split the range ``[{prefix}start,
    {prefix}end)`` (``MinuteWindow.parameters(prefix)``): its minutes outside the whole hours,
    and its whole hours."""
    minutes = f"""Minute >= fromUnixTimestamp({{{prefix}start:Int64}})
      AND Minute < fromUnixTimestamp({{{prefix}end:Int64}})
      AND (Minute < fromUnixTimestamp({{{prefix}hours_start:Int64}})
           OR Minute >= fromUnixTimestamp({{{prefix}hours_end:Int64}}))"""
    hours = f"""Hour >= fromUnixTimestamp({{{prefix}hours_start:Int64}})
      AND Hour < fromUnixTimestamp({{{prefix}hours_end:Int64}})"""
    return minutes, hours


def _tiered(minute_table: str, hour_table: str, columns: str, *prefixes: str) -> str:
    """A subquery with the rows of ``[start, end)`` (``MinuteWindow.parameters()``; of each
    range named by ``prefixes`` if given): whole hours ``[hours_start, hours_end)`` from
    ``hour_table`` (its ``Hour`` as ``Minute``), the other minutes from ``minute_table``.
    Readers aggregate it like the minute table."""
    parts = []
    for prefix in prefixes or ("",):
        minutes, hours = whole_hours(prefix)
        parts.append(f"SELECT Minute, {columns}\n    FROM {minute_table}\n    WHERE {minutes}")
        parts.append(f"SELECT Hour AS Minute, {columns}\n    FROM {hour_table}\n    WHERE {hours}")
    return "(\n    " + "\n    UNION ALL\n    ".join(parts) + "\n)"


_DB_COLUMNS = (
    "ServiceName, DbSystem, DbNamespace, Fingerprint, NormalizedStatement, SampleStatement, "
    "Calls, Errors, SlowCalls, SlowThresholdMs, DurationSum, DurationMax, DurationQuantiles, "
    "ExemplarTraceIds, SlowestTraceId"
)
RED_IN_WINDOW = _tiered(
    "otel_red_1m",
    "otel_red_1h",
    "ServiceName, SpanName, Kind, Calls, Errors, DurationSum, DurationMin, DurationMax, "
    "DurationQuantiles",
)
# Per service and kind (no operation): whole hours from the services' hourly table (migration
# 0015), one row per kind instead of one per operation.
SERVICES_IN_WINDOW = _tiered(
    "otel_red_1m",
    "otel_services_1h",
    "ServiceName, Kind, Calls, Errors, DurationSum, DurationMin, DurationMax, DurationQuantiles",
)
DB_IN_WINDOW = _tiered("otel_db_1m", "otel_db_1h", _DB_COLUMNS)
# A window and its baseline (``WINDOW_AND_BASELINE`` tells their rows apart), each read by
# whole hours and minutes like the above; the parameters of ``window_and_baseline``. Not for
# RED: merging the hours' larger t-digest states made slow services' 1-7 hour reads slower.
DB_IN_WINDOW_AND_BASELINE = _tiered("otel_db_1m", "otel_db_1h", _DB_COLUMNS, "", BASE)
# The latest service-graph edges (``topology.edges.latest_edges``), by whole hours and minutes.
EDGES_IN_WINDOW = edges_in(whole_hours())
EDGES_IN_WINDOW_AND_BASELINE = edges_in(whole_hours(), whole_hours(BASE))

KINDS = ("server", "client", "producer", "consumer", "internal", "unspecified")
# Spans that are requests a service handles: what a service's calls and latency count.
ENTRY_KINDS = ("server", "consumer")
KIND_DESCRIPTION = (
    "span kind: server, client, producer, consumer, internal, unspecified; "
    "`entry` = server and consumer; `all` = every kind"
)


@dataclass(frozen=True)
class MinuteWindow:
    """The whole minutes (or hours, see ``overview_window``) a time range overlaps, and the
    seconds rates are computed over."""

    start: dt.datetime
    end: dt.datetime
    seconds: float

    def parameters(self, prefix: str = "") -> dict[str, int]:
        """``{start:Int64}`` and ``{end:Int64}``: epoch seconds of the first minute and of the
        minute after the last one (``Minute >= start AND Minute < end``); ``hours_start`` and
        ``hours_end``: the whole hours inside, for the hourly tier (equal when there are none).
        Each name is prefixed with ``prefix``."""
        start, end = int(self.start.timestamp()), int(self.end.timestamp())
        hours_start = -(-start // _HOUR) * _HOUR
        hours_end = end // _HOUR * _HOUR
        if hours_end <= hours_start:
            hours_start = hours_end = start
        values = {"start": start, "end": end, "hours_start": hours_start, "hours_end": hours_end}
        return {prefix + name: value for name, value in values.items()}


def window_and_baseline(
    window: MinuteWindow, base_start: dt.datetime, base_end: dt.datetime
) -> dict[str, int]:
    """The parameters of ``WINDOW_AND_BASELINE`` and of the ``*_IN_WINDOW_AND_BASELINE``
    subqueries: ``window`` and the baseline ``[base_start, base_end)`` (whole minutes)."""
    seconds = (base_end - base_start).total_seconds()
    baseline = MinuteWindow(base_start, base_end, seconds)
    return {**window.parameters(), **baseline.parameters(BASE)}


def minute_window(time_range: TimeRange, now: dt.datetime | None = None) -> MinuteWindow:
    """The whole minutes ``time_range`` overlaps."""
    return _whole(time_range, _MINUTE, now)


def overview_window(time_range: TimeRange, now: dt.datetime | None = None) -> MinuteWindow:
    """What an overview reads of ``time_range``: its whole minutes, or from ``HOURLY_FROM_S``
    on its whole hours."""
    long = time_range.end - time_range.start >= dt.timedelta(seconds=HOURLY_FROM_S)
    return _whole(time_range, _HOUR if long else _MINUTE, now)


def _whole(time_range: TimeRange, step: int, now: dt.datetime | None) -> MinuteWindow:
    start_s = math.floor(time_range.start.timestamp() / step) * step
    end_s = math.ceil(time_range.end.timestamp() / step) * step
    now_s = (now or dt.datetime.now(dt.UTC)).timestamp()
    covered = min(end_s, now_s) - start_s
    if covered <= 0:  # a window entirely in the future: nothing to count, keep rates finite
        covered = end_s - start_s
    return MinuteWindow(
        start=dt.datetime.fromtimestamp(start_s, dt.UTC),
        end=dt.datetime.fromtimestamp(end_s, dt.UTC),
        seconds=float(covered),
    )


def kinds(parameter: str, value: str | None, default: str) -> list[str]:
    """The span kinds a ``kind`` parameter selects; accepts ``SPAN_KIND_SERVER`` and
    ``Server`` spellings too. 422 naming ``parameter`` for anything else."""
    text = (value if value is not None else default).strip().lower().removeprefix("span_kind_")
    if text == "all":
        return list(KINDS)
    if text == "entry":
        return list(ENTRY_KINDS)
    if text in KINDS:
        return [text]
    raise invalid(
        parameter,
        f"{value!r} is not a span kind: use one of {', '.join(KINDS)}, entry or all",
    )


def ms(ns: Any) -> float | None:
    """Nanoseconds as milliseconds (3 decimals); None for what an empty aggregate yields."""
    value = float(ns)
    if math.isnan(value) or math.isinf(value):
        return None
    return round(value / _NS_PER_MS, 3)


def quantiles_ms(quantiles: Sequence[Any]) -> tuple[float | None, float | None, float | None]:
    """p50, p95 and p99 in ms from ``quantilesTDigestMerge(0.5, 0.95, 0.99)``."""
    p50, p95, p99 = (ms(q) for q in quantiles)
    return p50, p95, p99


def rate(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0
