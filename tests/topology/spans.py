"""Spans for the topology tests, sent over OTLP/HTTP (JSON) one request per call.

Every test names its services and peers with a suffix of its own (``Run``), so that its
edges are its own in the session's shared engine; times are a few minutes in the past.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from tracehouse.app import Tracehouse
from tracehouse.query._rollups import minute_window
from tracehouse.query.params import TimeRange
from tracehouse.topology.api import EDGES_SQL

MS = 1_000_000
_KINDS = {"server": 2, "client": 3, "producer": 4, "consumer": 5, "internal": 1}


def new_id(size: int) -> str:
    return os.urandom(size).hex()


@dataclass
class Span:
    """One span as the test means it; ``otlp`` is its OTLP JSON."""

    service: str
    kind: str
    start_ns: int
    duration_ms: float
    trace_id: str = field(default_factory=lambda: new_id(16))
    span_id: str = field(default_factory=lambda: new_id(8))
    parent: str = ""
    error: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    name: str = "op"

    def child(self, service: str, kind: str = "server", **changes: Any) -> Span:
        """A span of the same trace whose parent is this one (1 ms later unless given)."""
        values: dict[str, Any] = {
            "start_ns": self.start_ns + MS,
            "duration_ms": max(self.duration_ms - 2, 0.5),
        }
        values.update(changes)
        return Span(service, kind, trace_id=self.trace_id, parent=self.span_id, **values)

    def otlp(self) -> dict[str, Any]:
        return {
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "parentSpanId": self.parent,
            "name": self.name,
            "kind": _KINDS[self.kind],
            "startTimeUnixNano": str(self.start_ns),
            "endTimeUnixNano": str(self.start_ns + round(self.duration_ms * MS)),
            "attributes": [
                {"key": key, "value": {"stringValue": value}} for key, value in self.attrs.items()
            ],
            "status": {"code": 2} if self.error else {},
        }


def send(app: Tracehouse, *spans: Span) -> None:
    """One OTLP/HTTP request with these spans (a resource per service); returns once stored."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_service.setdefault(span.service, []).append(span.otlp())
    request = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "tests"}, "spans": items}],
            }
            for service, items in by_service.items()
        ]
    }
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/traces",
        content=json.dumps(request),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert app.pipeline is not None and app.pipeline.wait_stored(30)


@dataclass(frozen=True)
class Run:
    """A test's names and its base instant: 5 s into the minute that began 5 minutes ago."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    base_ns: int = field(default_factory=lambda: ((time.time_ns() // 10**9) // 60 - 5) * 60 * 10**9)

    def name(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def at(self, offset_ms: float) -> int:
        """The base instant (5 s into its minute) plus an offset, in ns."""
        return self.base_ns + 5_000 * MS + round(offset_ms * MS)

    @property
    def minute(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.base_ns // 10**9, dt.UTC)


def edges(app: Tracehouse, run: Run) -> dict[tuple[str, str, str], dict[str, Any]]:
    """This run's edges over the last 20 minutes, as the API reads them:
    ``(source, target, type) -> row``."""
    now = dt.datetime.now(dt.UTC)
    window = minute_window(TimeRange(now - dt.timedelta(minutes=20), now))
    result = app.client.query(EDGES_SQL, parameters=window.parameters())
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    return {
        (row["source"], row["target"], row["type"]): row
        for row in rows
        if not row["per_target"] and (run.suffix in row["source"] or run.suffix in row["target"])
    }
