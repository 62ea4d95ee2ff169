"""A small shop's telemetry, sent over OTLP/HTTP (JSON), for the read API tests.

``tests/data/query/traces.json`` and ``logs.json`` are OTLP JSON requests whose times are
offsets from a base instant and whose names carry ``$RUN``; ``send_shop`` rebases the times
on a recent instant, replaces ``$RUN`` with a suffix unique to the run and the trace ids with
random ones, so that the shop's rows are its own in the shared engine. What they hold:

- trace A: checkout ``GET /cart`` (0-120 ms, unset) → client ``POST /pay`` (10-70 ms, error,
  a link to B's root) → payments ``POST /pay`` (15-65 ms, error, an exception event) → client
  ``SELECT cards`` (20-50 ms, ok); and checkout ``render`` (80-110 ms, internal).
- trace B: checkout ``GET /cart`` (200-208 ms, ok) → client ``GET /inventory`` (201-206 ms) →
  inventory ``GET /inventory`` (199-205 ms: clock skew puts it before its root).
- trace C: worker ``consume orders`` (300-340 ms, consumer) whose parent never arrived →
  ``process`` (310-330 ms, internal).
- log records: three of trace A (5, 40 and 60 ms), one of trace C (320 ms), four outside any
  trace (500, 600 and 700 ms).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import DATA
from tracehouse.app import Tracehouse
from tracehouse.config import Settings

MS = 1_000_000
# The trace ids in the data files, by the names used above.
FILE_TRACE_IDS = {
    "A": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
    "B": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2",
    "C": "ccccccccccccccccccccccccccccccc3",
}
Params = Mapping[str, Any] | list[tuple[str, Any]]


@dataclass(frozen=True)
class Shop:
    app: Tracehouse
    run: str
    base_ns: int
    trace_ids: dict[str, str]  # "A" -> the id it was sent with

    def service(self, name: str) -> str:
        return f"{name}-{self.run}"

    def ns(self, offset_ms: float) -> str:
        """The base instant plus an offset, as the API writes nanoseconds."""
        return str(self.base_ns + round(offset_ms * MS))

    def epoch_ms(self, offset_ms: int) -> str:
        """The base instant plus an offset, as a time-range parameter (epoch ms)."""
        return str((self.base_ns + offset_ms * MS) // MS)

    def params(self, params: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Query parameters with ``{run}`` replaced by the run suffix, ``{ms:150}`` by the
        base instant plus 150 ms (epoch ms), ``{trace:A}`` by trace A's id (``{TRACE:A}``:
        in upper case); a list value is a repeated parameter."""

        def fill(value: Any) -> str:
            text = str(value).replace("{run}", self.run)
            if text.startswith("{ms:"):
                return self.epoch_ms(int(text[4:-1]))
            if text.startswith("{trace:"):
                return self.trace_ids[text[7:-1]]
            if text.startswith("{TRACE:"):
                return self.trace_ids[text[7:-1]].upper()
            return text

        out: list[tuple[str, str]] = []
        for name, value in params.items():
            values = value if isinstance(value, list) else [value]
            out.extend((name, fill(item)) for item in values)
        return out

    def get(self, path: str, params: Params | None = None) -> httpx.Response:
        url = f"http://127.0.0.1:{self.app.ports.api}/api/v1{path}"
        return httpx.get(url, params=params, timeout=30)


def _rebase(node: Any, base_ns: int, trace_ids: Mapping[str, str]) -> Any:
    if isinstance(node, list):
        return [_rebase(item, base_ns, trace_ids) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.lower().endswith("timeunixnano"):
            out[key] = str(base_ns + int(value))
        elif key == "traceId":
            out[key] = trace_ids[value]
        else:
            out[key] = _rebase(value, base_ns, trace_ids)
    return out


def _post(app: Tracehouse, path: str, request: Any) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}{path}",
        content=json.dumps(request),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert not response.json().get("partialSuccess"), response.text


def send_shop(app: Tracehouse) -> Shop:
    """Send the shop's traces and logs, wait until they are stored, and describe them."""
    run = uuid.uuid4().hex[:10]
    # Two minutes ago with an odd nanosecond part, so that any rounding would show.
    base_ns = (time.time_ns() // 10**9 - 120) * 10**9 + 123_456_789
    trace_ids = {name: os.urandom(16).hex() for name in FILE_TRACE_IDS}
    by_file_id = {FILE_TRACE_IDS[name]: trace_ids[name] for name in FILE_TRACE_IDS}
    for path, file in (("/v1/traces", "traces.json"), ("/v1/logs", "logs.json")):
        text = (DATA / "query" / file).read_text().replace("$RUN", run)
        _post(app, path, _rebase(json.loads(text), base_ns, by_file_id))
    assert app.pipeline is not None and app.pipeline.wait_stored(30)
    return Shop(app, run, base_ns, trace_ids)


@contextmanager
def running_shop(engine_url: str, data_dir: Path) -> Iterator[Shop]:
    """A tracehouse server on loopback holding the shop's data; stopped on exit."""
    settings = Settings(
        data_dir=data_dir,
        clickhouse_url=engine_url,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        api_port=0,
    )
    app = Tracehouse(settings)
    app.start()
    try:
        yield send_shop(app)
    finally:
        app.stop()
