"""Pieces the reliability tests share: a refusing loopback port, readiness, waiting for a
condition, and the stored (TraceId, SpanId) counts of a service in a running server."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import query
from tracehouse.app import Tracehouse
from tracehouse.bench.soak import STORED_IDS_SQL, SpanKey


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound but never listening, and held for the
    duration so no other server on this machine can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def readiness(api_port: int) -> tuple[int, str]:
    response = httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=10)
    return response.status_code, str(response.json().get("reason", ""))


def stored_ids(app: Tracehouse, service: str) -> Counter[SpanKey]:
    """(TraceId, SpanId) → rows, once everything the server acknowledged is inserted."""
    rows = query(app, STORED_IDS_SQL, service=service)
    return Counter({(str(t), str(s)): int(n) for t, s, n in rows})
