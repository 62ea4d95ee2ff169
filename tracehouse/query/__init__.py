"""Query: the HTTP API on port 8080 (health and metrics now; the read API comes with issue 3)."""

from tracehouse.query.health import ReadinessCheck, health_router

__all__ = ["ReadinessCheck", "health_router"]
