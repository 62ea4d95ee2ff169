"""Insight events: sudden increases of the error rate or latency of a service's entry spans,
or of one of its five busiest endpoints, each with the diagnosis of the affected service.

- :func:`detect` is pure: the rollup figures of a window and of its baseline in, the
  increases out (rules below).
- :class:`InsightWorker` is the worker role's job (``start()``/``stop(grace_s)``, running
  while this process leads): every ``interval_s`` it reads ``otel_red_1m`` for the last
  closed ``window_min`` minutes and the ``baseline_min`` before them, detects, attaches
  :func:`~tracehouse.diagnosis.api.diagnose` for the affected service (and endpoint) and
  stores the insight in ``tracehouse_insights`` (migration 0011). An insight of the same
  kind, service and endpoint is not raised again within ``cooldown_min``.
- :func:`recent_insights` reads them back (``GET /api/v1/insights``); alert rules of kind
  ``insight`` count :func:`insight_events` and read :func:`get_insight` when they fire.

Rules (``InsightSettings``), judged only with at least ``min_calls`` calls in the window and
in the baseline:

- **latency**: the average or the p95 is at least ``factor`` times the baseline's and at
  least ``min_delta_ms`` above it;
- **error_rate**: the error rate rose by at least ``error_increase`` (absolute) and is at
  least ``factor`` times the baseline's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from prometheus_client import Counter
from pydantic import BaseModel

from tracehouse.diagnosis.api import DEFAULT_SAMPLE, Diagnosis, diagnose
from tracehouse.query._rollups import (
    ENTRY_KINDS,
    MinuteWindow,
    quantiles_ms,
    window_and_baseline,
)
from tracehouse.query.params import TimeRange, invalid, time_range
from tracehouse.query.slow_services import RED_SQL

log = logging.getLogger(__name__)

InsightKind = Literal["latency", "error_rate"]
TOP_ENDPOINTS = 5
MAX_LIMIT = 500
_NS_PER_MS = 1_000_000

INSIGHTS_FOUND = Counter("tracehouse_insights_total", "Insight events stored", ["kind"])
INSIGHT_RUNS = Counter("tracehouse_insight_runs_total", "Insight job runs", ["outcome"])

INSERT_COLUMNS = (
    "Id",
    "DetectedAt",
    "WindowStart",
    "WindowEnd",
    "BaselineStart",
    "BaselineEnd",
    "Kind",
    "Service",
    "Operation",
    "Value",
    "BaselineValue",
    "AvgMs",
    "BaselineAvgMs",
    "P95Ms",
    "BaselineP95Ms",
    "ErrorRate",
    "BaselineErrorRate",
    "Calls",
    "BaselineCalls",
    "Diagnosis",
    "DiagnosisError",
    "Version",
)

# The insights raised since a moment (cooldown), by kind, service and endpoint.
RECENT_KEYS_SQL = """
SELECT DISTINCT Kind, Service, Operation
FROM tracehouse_insights
WHERE DetectedAt >= fromUnixTimestamp64Milli({since_ms:Int64})
"""

# Insights detected in a range, newest first; empty filters select everything.
INSIGHTS_SQL = f"""
SELECT {", ".join(INSERT_COLUMNS)}
FROM tracehouse_insights FINAL
WHERE DetectedAt >= fromUnixTimestamp64Milli({{start_ms:Int64}})
  AND DetectedAt < fromUnixTimestamp64Milli({{end_ms:Int64}})
  AND ({{service:String}} = '' OR Service = {{service:String}})
  AND ({{kind:String}} = '' OR Kind = {{kind:String}})
ORDER BY DetectedAt DESC, Id
LIMIT {{limit:UInt32}}
"""

# Insights detected in a range without their diagnosis, oldest first (alert rules on insights
# count them per label set every evaluation); empty filters select everything.
INSIGHT_EVENTS_SQL = """
SELECT Id, DetectedAt, Kind, Service, Operation, Value, BaselineValue, Diagnosis != ''
FROM tracehouse_insights FINAL
WHERE DetectedAt >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND DetectedAt < fromUnixTimestamp64Milli({end_ms:Int64})
  AND ({service:String} = '' OR Service = {service:String})
  AND ({kind:String} = '' OR Kind = {kind:String})
ORDER BY DetectedAt, Id
LIMIT {limit:UInt32}
"""

# One insight by its id.
INSIGHT_BY_ID_SQL = f"""
SELECT {", ".join(INSERT_COLUMNS)}
FROM tracehouse_insights FINAL
WHERE Id = {{id:String}}
LIMIT 1
"""


@dataclass(frozen=True)
class InsightSettings:
    """How the insights job judges and how often it runs (``Settings.insights_*``)."""

    interval_s: float = 60.0
    window_min: int = 5
    baseline_min: int = 30
    factor: float = 1.5
    min_calls: int = 20
    error_increase: float = 0.05
    min_delta_ms: float = 20.0
    cooldown_min: int = 15
    lag_s: float = 60.0
    sample: int = DEFAULT_SAMPLE
    # Diagnoses per run at most (a broad outage raises many insights at once); the rest are
    # stored without one, saying so.
    max_diagnoses: int = 20


@dataclass(frozen=True)
class Figures:
    """One row of ``RED_SQL``: a service ('' operation) or an endpoint, window and baseline."""

    service: str
    operation: str
    calls: int
    errors: int
    avg_ms: float
    p95_ms: float
    base_calls: int
    base_errors: int
    base_avg_ms: float
    base_p95_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def base_error_rate(self) -> float:
        return self.base_errors / self.base_calls if self.base_calls else 0.0

    @staticmethod
    def of(row: dict[str, Any]) -> Figures:
        calls, base_calls = int(row["calls"]), int(row["base_calls"])
        p95 = quantiles_ms(row["quantiles"])[1] if calls else None
        base_p95 = quantiles_ms(row["base_quantiles"])[1] if base_calls else None
        return Figures(
            service=row["service"],
            operation=row["operation"],
            calls=calls,
            errors=int(row["errors"]),
            avg_ms=int(row["total_ns"]) / calls / _NS_PER_MS if calls else 0.0,
            p95_ms=p95 or 0.0,
            base_calls=base_calls,
            base_errors=int(row["base_errors"]),
            base_avg_ms=int(row["base_total_ns"]) / base_calls / _NS_PER_MS if base_calls else 0.0,
            base_p95_ms=base_p95 or 0.0,
        )


@dataclass(frozen=True)
class Detection:
    """A sudden increase: ``value`` now against ``baseline_value`` (ms or error rate)."""

    kind: InsightKind
    figures: Figures
    value: float
    baseline_value: float


def _judge(f: Figures, s: InsightSettings) -> list[Detection]:
    if f.calls < s.min_calls or f.base_calls < s.min_calls:
        return []
    found = []

    def rose(now: float, before: float) -> bool:
        return now >= s.factor * before and now - before >= s.min_delta_ms

    if rose(f.avg_ms, f.base_avg_ms) or rose(f.p95_ms, f.base_p95_ms):
        found.append(Detection("latency", f, round(f.avg_ms, 3), round(f.base_avg_ms, 3)))
    rate, base_rate = f.error_rate, f.base_error_rate
    if rate - base_rate >= s.error_increase and rate >= s.factor * base_rate:
        found.append(Detection("error_rate", f, round(rate, 6), round(base_rate, 6)))
    return found


def detect(rows: list[Figures], settings: InsightSettings) -> list[Detection]:
    """The increases among services (operation '') and each service's ``TOP_ENDPOINTS``
    busiest endpoints (by calls in the window and the baseline), services first."""
    services = [f for f in rows if not f.operation]
    endpoints: dict[str, list[Figures]] = {}
    for f in rows:
        if f.operation:
            endpoints.setdefault(f.service, []).append(f)
    judged: list[Figures] = sorted(services, key=lambda f: f.service)
    for service in sorted(endpoints):
        busiest = sorted(endpoints[service], key=lambda f: (-(f.calls + f.base_calls), f.operation))
        judged.extend(busiest[:TOP_ENDPOINTS])
    return [d for f in judged for d in _judge(f, settings)]


class Insight(BaseModel):
    """A sudden increase of ``kind`` for ``service`` (``operation`` None: its entry spans as a
    whole), ``value`` now against ``baseline_value`` (average ms for latency, error rate),
    with the figures of both windows and the diagnosis of the affected service."""

    id: str
    detected_at: dt.datetime
    window_start: dt.datetime
    window_end: dt.datetime
    baseline_start: dt.datetime
    baseline_end: dt.datetime
    kind: InsightKind
    service: str
    operation: str | None
    value: float
    baseline_value: float
    avg_ms: float
    baseline_avg_ms: float
    p95_ms: float
    baseline_p95_ms: float
    error_rate: float
    baseline_error_rate: float
    calls: int
    baseline_calls: int
    diagnosis: Diagnosis | None
    diagnosis_error: str | None


class InsightsPage(BaseModel):
    start: dt.datetime
    end: dt.datetime
    insights: list[Insight]


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _insight(row: tuple[Any, ...]) -> Insight:
    r = dict(zip(INSERT_COLUMNS, row, strict=True))
    diagnosis = Diagnosis.model_validate(json.loads(r["Diagnosis"])) if r["Diagnosis"] else None
    return Insight(
        id=r["Id"],
        detected_at=_utc(r["DetectedAt"]),
        window_start=_utc(r["WindowStart"]),
        window_end=_utc(r["WindowEnd"]),
        baseline_start=_utc(r["BaselineStart"]),
        baseline_end=_utc(r["BaselineEnd"]),
        kind=r["Kind"],
        service=r["Service"],
        operation=r["Operation"] or None,
        value=r["Value"],
        baseline_value=r["BaselineValue"],
        avg_ms=r["AvgMs"],
        baseline_avg_ms=r["BaselineAvgMs"],
        p95_ms=r["P95Ms"],
        baseline_p95_ms=r["BaselineP95Ms"],
        error_rate=r["ErrorRate"],
        baseline_error_rate=r["BaselineErrorRate"],
        calls=r["Calls"],
        baseline_calls=r["BaselineCalls"],
        diagnosis=diagnosis,
        diagnosis_error=r["DiagnosisError"] or None,
    )


def _ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def recent_insights(
    client: Any,
    start: dt.datetime,
    end: dt.datetime | None = None,
    service: str | None = None,
    kind: InsightKind | None = None,
    limit: int = 100,
) -> list[Insight]:
    """Insights detected in ``[start, end)`` (end: now), newest first, optionally of one
    service and kind — for the API and for alert rules that fire on insights."""
    until = end or dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    rows = client.query(
        INSIGHTS_SQL,
        parameters={
            "start_ms": _ms(start),
            "end_ms": _ms(until),
            "service": service or "",
            "kind": kind or "",
            "limit": limit,
        },
    ).result_rows
    return [_insight(tuple(row)) for row in rows]


@dataclass(frozen=True)
class InsightEvent:
    """An insight without its diagnosis (``operation`` '': the service's entry spans as a
    whole); ``ratio`` is ``value`` over ``baseline_value`` (inf from a zero baseline)."""

    id: str
    detected_at: dt.datetime
    kind: InsightKind
    service: str
    operation: str
    value: float
    baseline_value: float
    diagnosed: bool

    @property
    def ratio(self) -> float:
        if self.baseline_value > 0:
            return self.value / self.baseline_value
        return float("inf") if self.value > 0 else 1.0


# Events read per call at most: far above what a 20-minute window holds (one insight per
# kind, service and endpoint per cooldown).
MAX_EVENTS = 100_000


def insight_events(
    client: Any,
    start: dt.datetime,
    end: dt.datetime,
    service: str | None = None,
    kind: InsightKind | None = None,
) -> list[InsightEvent]:
    """Insights detected in ``[start, end)``, oldest first, without their diagnosis (cheap
    enough for every evaluation of an alert rule on insights)."""
    rows = client.query(
        INSIGHT_EVENTS_SQL,
        parameters={
            "start_ms": _ms(start),
            "end_ms": _ms(end),
            "service": service or "",
            "kind": kind or "",
            "limit": MAX_EVENTS,
        },
    ).result_rows
    return [
        InsightEvent(str(r[0]), _utc(r[1]), r[2], r[3], r[4], float(r[5]), float(r[6]), bool(r[7]))
        for r in rows
    ]


def get_insight(client: Any, insight_id: str) -> Insight | None:
    """One insight with its diagnosis, or None when there is none of that id."""
    rows = client.query(INSIGHT_BY_ID_SQL, parameters={"id": insight_id}).result_rows
    return _insight(tuple(rows[0])) if rows else None


class InsightDetector:
    """One run of the insights job over the minutes before ``now`` (see the module doc)."""

    def __init__(self, client: Any, settings: InsightSettings) -> None:
        self._client = client
        self.settings = settings

    def windows(self, now: dt.datetime) -> tuple[MinuteWindow, dt.datetime]:
        """The closed minutes judged, and the start of their baseline."""
        s = self.settings
        end_s = int((now.timestamp() - s.lag_s) // 60 * 60)
        start_s = end_s - s.window_min * 60
        start = dt.datetime.fromtimestamp(start_s, dt.UTC)
        window = MinuteWindow(start, dt.datetime.fromtimestamp(end_s, dt.UTC), end_s - start_s)
        return window, start - dt.timedelta(minutes=s.baseline_min)

    def run_once(self, now: dt.datetime | None = None) -> list[Insight]:
        """Detect, diagnose and store; returns the insights stored by this run."""
        at = now or dt.datetime.now(dt.UTC)
        s = self.settings
        window, base_start = self.windows(at)
        result = self._client.query(
            RED_SQL,
            parameters={
                **window_and_baseline(window, base_start, window.start),
                "kinds": list(ENTRY_KINDS),
            },
        )
        rows = [
            Figures.of(dict(zip(result.column_names, row, strict=True)))
            for row in result.result_rows
        ]
        found = detect(rows, s)
        if not found:
            return []
        since = at - dt.timedelta(minutes=s.cooldown_min)
        recent = {
            tuple(r)
            for r in self._client.query(
                RECENT_KEYS_SQL, parameters={"since_ms": _ms(since)}
            ).result_rows
        }
        diagnoses: dict[tuple[str, str], tuple[str, str]] = {}
        stored: list[list[Any]] = []
        for d in found:
            f = d.figures
            if (d.kind, f.service, f.operation) in recent:
                continue
            key = (f.service, f.operation)
            if key not in diagnoses:
                if len(diagnoses) < s.max_diagnoses:
                    diagnoses[key] = self._diagnose(f.service, f.operation, window)
                else:
                    skipped = f"not diagnosed: over {s.max_diagnoses} diagnoses in this run"
                    diagnoses[key] = ("", skipped)
            text, error = diagnoses[key]
            identity = f"{d.kind}|{f.service}|{f.operation}|{int(window.end.timestamp())}"
            stored.append(
                [
                    hashlib.sha256(identity.encode()).hexdigest()[:32],
                    at,
                    window.start,
                    window.end,
                    base_start,
                    window.start,
                    d.kind,
                    f.service,
                    f.operation,
                    d.value,
                    d.baseline_value,
                    round(f.avg_ms, 3),
                    round(f.base_avg_ms, 3),
                    round(f.p95_ms, 3),
                    round(f.base_p95_ms, 3),
                    round(f.error_rate, 6),
                    round(f.base_error_rate, 6),
                    f.calls,
                    f.base_calls,
                    text,
                    error,
                    time.time_ns(),
                ]
            )
        if not stored:
            return []
        self._client.insert("tracehouse_insights", stored, column_names=list(INSERT_COLUMNS))
        for row in stored:
            INSIGHTS_FOUND.labels(kind=row[6]).inc()
        return [_insight(tuple(row)) for row in stored]

    def _diagnose(self, service: str, operation: str, window: MinuteWindow) -> tuple[str, str]:
        """The diagnosis as JSON, or the error that prevented it (never raises)."""
        try:
            found = diagnose(
                self._client,
                service,
                operation or None,
                window,
                "previous",
                sample=self.settings.sample,
                limit=5,
            )
        except Exception as exc:  # one failing diagnosis must not lose the insight
            log.exception("diagnosis of %s %s failed", service, operation)
            return "", f"{type(exc).__name__}: {exc}"
        return found.model_dump_json(), ""


class InsightWorker:
    """Runs an :class:`InsightDetector` every ``interval_s`` in a daemon thread; a failing run
    is logged, counted and retried at the next interval."""

    def __init__(self, client: Any, settings: InsightSettings) -> None:
        self.detector = InsightDetector(client, settings)
        self.interval_s = settings.interval_s
        self.runs = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="insights", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Ask the loop to end and wait for a run in progress. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(grace_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.detector.run_once()
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                INSIGHT_RUNS.labels(outcome="failed").inc()
                log.exception("insight run failed (will retry in %.0f s)", self.interval_s)
            else:
                self.last_error = None
                INSIGHT_RUNS.labels(outcome="ok").inc()
            finally:
                self.runs += 1
            self._stop.wait(self.interval_s)


def router(client: Any) -> APIRouter:
    """``GET /insights`` (paths relative to ``/api/v1``) bound to a ClickHouse client."""
    api = APIRouter(tags=["diagnosis"])

    @api.get("/insights", response_model=InsightsPage)
    def insights(
        span_range: Annotated[TimeRange, Depends(time_range)],
        service: Annotated[str | None, Query(description="only this service's")] = None,
        kind: Annotated[InsightKind | None, Query(description="latency or error_rate")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="insights returned")] = 100,
    ) -> InsightsPage:
        """Insight events detected in ``start``..``end``, newest first: sudden increases of the
        latency or error rate of a service's entry spans (``operation`` null) or of one of its
        five busiest endpoints, each with the figures now and in the baseline and the
        diagnosis of the affected service (as ``/api/v1/diagnose`` answers, top 5 causes)."""
        if service is not None and not service.strip():
            raise invalid("service", "must not be empty")
        found = recent_insights(client, span_range.start, span_range.end, service, kind, limit)
        return InsightsPage(start=span_range.start, end=span_range.end, insights=found)

    return api
