"""Diagnosis: where the cause of a slowdown or of failures lies (``GET /api/v1/diagnose``),
insight events about sudden increases (``GET /api/v1/insights``, the worker's insights job),
and the simulator that scores the diagnosis. Method: docs/diagnosis.md."""

from fastapi import APIRouter

from tracehouse.diagnosis import api, insights
from tracehouse.diagnosis.api import Diagnosis, diagnose
from tracehouse.diagnosis.insights import (
    Insight,
    InsightSettings,
    InsightWorker,
    recent_insights,
)


def diagnosis_router(client: object) -> APIRouter:
    """``/diagnose`` and ``/insights`` (mounted under ``/api/v1``), bound to a client."""
    router = APIRouter()
    router.include_router(api.router(client))
    router.include_router(insights.router(client))
    return router


__all__ = [
    "Diagnosis",
    "Insight",
    "InsightSettings",
    "InsightWorker",
    "diagnose",
    "diagnosis_router",
    "recent_insights",
]
