"""Query: the HTTP API on port 8080 — health, metrics and the read API under /api/v1."""

from tracehouse.query.api import read_router
from tracehouse.query.health import ReadinessCheck, health_router

__all__ = ["ReadinessCheck", "health_router", "read_router"]
