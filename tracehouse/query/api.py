"""The read API under ``/api/v1``: one router per area, each reading ClickHouse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from tracehouse.query import logs, metrics, reports, services, slow_services, sql, traces
from tracehouse.query.slow_services import SlowServiceDefaults

# Each area module exposes ``router(client) -> APIRouter`` (paths relative to /api/v1).
_AREAS: tuple[Callable[[Any], APIRouter], ...] = (
    traces.router,
    logs.router,
    services.router,
    sql.router,
    reports.router,
    metrics.router,
)


def read_router(client: Any, slow: SlowServiceDefaults | None = None) -> APIRouter:
    """All read endpoints, bound to a ClickHouse client; ``slow``: what makes a service slow
    unless a request says otherwise."""
    # /topology lives in tracehouse/topology/api.py, beside the job filling it; imported here,
    # not at the top, because it reads this package's _rollups (importing it first would
    # otherwise find tracehouse.query half-initialised).
    from tracehouse.topology import api as topology

    api = APIRouter(prefix="/api/v1")
    for area in (*_AREAS, topology.router):
        api.include_router(area(client))
    api.include_router(slow_services.router(client, slow or SlowServiceDefaults()))
    return api
