"""Query parameters shared by the read API: the time range and limits.

Times are RFC 3339 (``2026-11-23T10:00:00Z``) or Unix epoch seconds (``1795428000``, decimals
allowed) or milliseconds (13 digits). ``end`` defaults to now and ``start`` to one hour before
``end``. A bad value is a 422 naming the parameter and what was expected.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Query

MAX_RANGE = dt.timedelta(days=31)
DEFAULT_RANGE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class TimeRange:
    start: dt.datetime
    end: dt.datetime

    @property
    def start_ns(self) -> int:
        return _unix_ns(self.start)

    @property
    def end_ns(self) -> int:
        return _unix_ns(self.end)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _unix_ns(moment: dt.datetime) -> int:
    """Exact nanoseconds since the epoch (no float rounding)."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def invalid(parameter: str, message: str) -> HTTPException:
    """A 422 in FastAPI's validation-error shape, naming the query parameter."""
    return HTTPException(
        status_code=422,
        detail=[{"loc": ["query", parameter], "msg": message, "type": "value_error"}],
    )


def parse_time(parameter: str, value: str) -> dt.datetime:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        seconds = number / 1000 if abs(number) >= 1e12 else number
        try:
            return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise invalid(parameter, f"{value!r} is out of range") from exc
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid(
            parameter, f"{value!r} is not RFC 3339 (2026-11-23T10:00:00Z) or epoch seconds/ms"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def time_range(
    start: Annotated[
        str | None, Query(description="RFC 3339 or epoch s/ms; default end-1h")
    ] = None,
    end: Annotated[str | None, Query(description="RFC 3339 or epoch s/ms; default now")] = None,
) -> TimeRange:
    """FastAPI dependency: the validated ``start``/``end`` of a request."""
    end_at = parse_time("end", end) if end else dt.datetime.now(dt.UTC)
    start_at = parse_time("start", start) if start else end_at - DEFAULT_RANGE
    if start_at >= end_at:
        raise invalid(
            "start", f"start ({start_at.isoformat()}) must be before end ({end_at.isoformat()})"
        )
    if end_at - start_at > MAX_RANGE:
        raise invalid("start", f"the range may span at most {MAX_RANGE.days} days")
    return TimeRange(start_at, end_at)
