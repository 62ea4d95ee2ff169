"""Health of the process itself: liveness, readiness and Prometheus metrics.

Served on the API port by every role, so an ingest-only deployment is probed and scraped the
same way as the query role.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

# Returns None when ready, else the reason it is not.
ReadinessCheck = Callable[[], str | None]


def health_router(readiness: ReadinessCheck) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz(response: Response) -> dict[str, str]:
        """Readiness: storage reachable and schema migrated; 503 with the reason otherwise."""
        problem = readiness()
        if problem:
            response.status_code = 503
            return {"status": "unavailable", "reason": problem}
        return {"status": "ready"}

    @router.get("/metrics")
    def prometheus_metrics() -> Response:
        """Prometheus exposition of tracehouse's own metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
