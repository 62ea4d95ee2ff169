"""Query: the HTTP API on port 8080 — health, metrics, the read API under /api/v1 and the
Jaeger v1 query API under /jaeger/api."""

from tracehouse.query.api import read_router
from tracehouse.query.health import ReadinessCheck, health_router
from tracehouse.query.jaeger import router as jaeger_router
from tracehouse.query.slow_services import SlowServiceDefaults

__all__ = [
    "ReadinessCheck",
    "SlowServiceDefaults",
    "health_router",
    "jaeger_router",
    "read_router",
]
