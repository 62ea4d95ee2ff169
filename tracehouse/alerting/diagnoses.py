"""The diagnosis attached to the alerts of ``insight`` rules (docs/alerting.md, decision 0018).

When such an alert starts firing, the worker asks :meth:`InsightDiagnoses.annotations_for`,
which looks up the insight the alert is about once (the lookup runs on the evaluation
thread: one small query). An insight the insights job diagnosed when it raised it carries its
diagnosis: that one is used as it is. An insight stored without one (the job's bound on
diagnoses per run, or a diagnosis that failed then) is diagnosed here, once per firing
episode, on a background thread, within the rule's ``diagnosis_timeout``; until it is
done the worker holds the alert's notification back. A diagnosis that fails or takes longer
than its time bound does not hold the alert: the annotations say the diagnosis is unavailable
and why.

Annotations added (kept for the whole episode, resolution included):

- ``insight``: what rose, e.g. ``latency of checkout (POST /pay): 212 ms, was 48 ms (4.4x)``;
- ``diagnosis``: the top three candidate causes, each with its entity, kind and the share of
  the change it explains, or ``unavailable: <why>``;
- ``diagnosis_url``: the ``/api/v1/diagnose`` request that answers the same question;
- ``__diagnosis``: the same as JSON; annotations whose name starts with ``__`` are not sent as
  annotations: this one becomes each alert's structured ``diagnosis`` field in the webhook.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from tracehouse.alerting.rules import INSIGHT_ANNOTATIONS
from tracehouse.diagnosis.api import DEFAULT_SAMPLE, Cause, Diagnosis, diagnose
from tracehouse.diagnosis.insights import Insight
from tracehouse.query._rollups import MinuteWindow

log = logging.getLogger(__name__)

HIDDEN_PREFIX = "__"
STRUCTURED_KEY = "__diagnosis"
DIAGNOSIS_KEYS = (*INSIGHT_ANNOTATIONS, STRUCTURED_KEY)
TOP_CAUSES = 3
# Diagnoses waiting or running at most; more firing alerts at once get "unavailable" at once
# rather than a queue that could only time out.
MAX_PENDING = 8
# A finished or abandoned job is forgotten this long after it started.
_FORGET_AFTER_S = 3600.0

Key = tuple[str, str, str]  # rule, alert fingerprint, firing episode
Lookup = Callable[[], Insight | None]


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def diagnose_url(external_url: str, insight: Insight) -> str:
    """The ``/api/v1/diagnose`` request over the insight's window against the window before."""
    params = {"service": insight.service}
    if insight.operation:
        params["operation"] = insight.operation
    params.update(
        start=_iso(insight.window_start), end=_iso(insight.window_end), baseline="previous"
    )
    return f"{external_url.rstrip('/')}/api/v1/diagnose?{urlencode(params)}"


def insight_text(insight: Insight) -> str:
    """One line: what rose, now and before."""
    subject = insight.service + (f" ({insight.operation})" if insight.operation else "")
    if insight.kind == "latency":
        now, before = f"{insight.value:.0f} ms", f"{insight.baseline_value:.0f} ms"
        name = "latency (average)"
    else:
        now, before = f"{insight.value:.1%}", f"{insight.baseline_value:.1%}"
        name = "error rate"
    ratio = (
        f" ({insight.value / insight.baseline_value:.1f}x)" if insight.baseline_value > 0 else ""
    )
    return f"{name} of {subject}: {now}, was {before}{ratio}"


def _explains(cause: Cause) -> str:
    parts = []
    if cause.latency.share is not None:
        parts.append(f"{cause.latency.share:.0%} of the latency change")
    if cause.errors.share is not None and cause.errors.share > 0:
        parts.append(f"{cause.errors.share:.0%} of the error-rate change")
    return ", ".join(parts) or f"score {cause.score:.3g}"


def _cause_text(cause: Cause) -> str:
    statement = f" ({cause.statement[:80]})" if cause.statement else ""
    return f"{cause.rank}. {cause.type} {cause.label}{statement}: {_explains(cause)}"


def _cause_json(cause: Cause) -> dict[str, Any]:
    return {
        "rank": cause.rank,
        "type": cause.type,
        "service": cause.service,
        "target": cause.target,
        "label": cause.label,
        "db_system": cause.db_system,
        "statement": cause.statement,
        "score": cause.score,
        "latency_share": cause.latency.share,
        "latency_delta_ms": cause.latency.delta_ms,
        "error_share": cause.errors.share,
        "error_rate": cause.errors.error_rate,
        "exemplar_trace_ids": cause.exemplar_trace_ids[:3],
    }


def diagnosis_annotations(
    insight: Insight | None,
    diagnosis: Diagnosis | None,
    unavailable: str | None,
    external_url: str,
) -> dict[str, str]:
    """The annotations of a diagnosis (``unavailable``: why there is none)."""
    out: dict[str, str] = {}
    structured: dict[str, Any] = {"status": "ok" if diagnosis is not None else "unavailable"}
    if insight is not None:
        out["insight"] = insight_text(insight)
        out["diagnosis_url"] = diagnose_url(external_url, insight)
        structured.update(
            insight_id=insight.id,
            service=insight.service,
            operation=insight.operation,
            start=_iso(insight.window_start),
            end=_iso(insight.window_end),
            baseline="previous",
            url=out["diagnosis_url"],
        )
    if diagnosis is None:
        out["diagnosis"] = f"unavailable: {unavailable or 'unknown reason'}"
        structured.update(error=unavailable, causes=[])
    else:
        top = diagnosis.causes[:TOP_CAUSES]
        if top:
            out["diagnosis"] = "; ".join(_cause_text(c) for c in top)
        else:
            out["diagnosis"] = "no candidate cause: the sampled traces show no change"
        structured["causes"] = [_cause_json(c) for c in top]
    out[STRUCTURED_KEY] = json.dumps(structured, separators=(",", ":"))
    return out


def visible(annotations: Mapping[str, str]) -> dict[str, str]:
    """The annotations an alert shows (those not starting with ``__``)."""
    return {k: v for k, v in annotations.items() if not k.startswith(HIDDEN_PREFIX)}


def top_exemplars(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """Exemplar traces of the diagnosis' first cause (empty without one)."""
    causes = (structured(annotations) or {}).get("causes") or []
    return tuple(str(t) for t in causes[0].get("exemplar_trace_ids", [])) if causes else ()


def structured(annotations: Mapping[str, str]) -> dict[str, Any] | None:
    """The structured diagnosis of an insight alert (None for other alerts)."""
    text = annotations.get(STRUCTURED_KEY)
    if not text:
        return None
    found = json.loads(text)
    return found if isinstance(found, dict) else None


@dataclass
class _Job:
    insight: Insight | None
    started: float  # time.monotonic()
    timeout_s: float
    future: Future[tuple[Diagnosis, float]] | None = None
    result: dict[str, str] | None = None  # annotations, once known


class InsightDiagnoses:
    """The diagnoses of firing ``insight`` alerts: at most one per firing episode, computed
    one at a time on a background thread, each within its time bound (module doc)."""

    def __init__(
        self,
        client: Any,
        external_url: str,
        sample: int = DEFAULT_SAMPLE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._client = client
        self.external_url = external_url
        self.sample = sample
        self.max_pending = max_pending
        self._jobs: dict[Key, _Job] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alert-diagnosis")

    def close(self) -> None:
        """Stop taking work; a diagnosis in progress is abandoned (daemon-like)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def annotations_for(self, key: Key, timeout_s: float, lookup: Lookup) -> dict[str, str] | None:
        """The diagnosis annotations of the alert episode ``key``, or None while its diagnosis
        is being computed within ``timeout_s``. The first call runs ``lookup`` (the insight the
        alert is about) and, if that insight has no stored diagnosis, starts one."""
        now = time.monotonic()
        with self._lock:
            self._forget_old(now)
            job = self._jobs.get(key)
            if job is None:
                job = self._begin(key, timeout_s, lookup, now)
            if job.result is None:
                job.result = self._outcome(job, now)
            return job.result

    def pending(self) -> int:
        """Diagnoses waiting or running."""
        with self._lock:
            return self._running()

    def _running(self) -> int:
        return sum(
            1
            for j in self._jobs.values()
            if j.result is None and j.future is not None and not j.future.done()
        )

    def _begin(self, key: Key, timeout_s: float, lookup: Lookup, now: float) -> _Job:
        try:
            insight = lookup()
        except Exception as exc:  # the alert goes out anyway, saying why
            log.exception("looking up the insight of alert %s", key)
            job = _Job(None, now, timeout_s)
            job.result = self._unavailable(
                None, f"the insight could not be read: {type(exc).__name__}: {exc}"
            )
            self._jobs[key] = job
            return job
        job = _Job(insight, now, timeout_s)
        self._jobs[key] = job
        if insight is None:
            job.result = self._unavailable(None, "no matching insight in the rule's window")
        elif insight.diagnosis is not None:
            job.result = diagnosis_annotations(insight, insight.diagnosis, None, self.external_url)
        elif self._running() >= self.max_pending:
            job.result = self._unavailable(
                insight, f"{self.max_pending} diagnoses already in progress"
            )
        else:
            try:
                job.future = self._executor.submit(self._diagnose, insight)
            except RuntimeError as exc:  # shut down: the worker is stopping
                job.result = self._unavailable(insight, f"not started: {exc}")
        return job

    def _diagnose(self, insight: Insight) -> tuple[Diagnosis, float]:
        window = MinuteWindow(
            insight.window_start,
            insight.window_end,
            (insight.window_end - insight.window_start).total_seconds(),
        )
        found = diagnose(
            self._client,
            insight.service,
            insight.operation,
            window,
            "previous",
            sample=self.sample,
            limit=TOP_CAUSES,
        )
        return found, time.monotonic()

    def _outcome(self, job: _Job, now: float) -> dict[str, str] | None:
        future = job.future
        assert future is not None
        limit = f"not finished within {job.timeout_s:g} s"
        if not future.done():
            if now - job.started <= job.timeout_s:
                return None
            future.cancel()  # if it has not started; a running one is left to finish
            return self._unavailable(job.insight, limit)
        try:
            diagnosis, finished = future.result()
        except Exception as exc:
            which = job.insight.id if job.insight is not None else "?"
            log.warning("diagnosis of insight %s failed: %s", which, exc)
            return self._unavailable(job.insight, f"failed: {type(exc).__name__}: {exc}")
        if finished - job.started > job.timeout_s:
            return self._unavailable(job.insight, limit)
        return diagnosis_annotations(job.insight, diagnosis, None, self.external_url)

    def _unavailable(self, insight: Insight | None, why: str) -> dict[str, str]:
        return diagnosis_annotations(insight, None, why, self.external_url)

    def _forget_old(self, now: float) -> None:
        for key in [k for k, j in self._jobs.items() if now - j.started > _FORGET_AFTER_S]:
            del self._jobs[key]
