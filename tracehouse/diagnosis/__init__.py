"""Diagnosis: where the cause of a slowdown or of failures lies (``GET /api/v1/diagnose``),
insight events about sudden changes (``GET /api/v1/insights``), and the simulator that
scores both. Method: docs/diagnosis.md."""

from tracehouse.diagnosis.api import Diagnosis, diagnose
from tracehouse.diagnosis.api import router as diagnosis_router

__all__ = ["Diagnosis", "diagnose", "diagnosis_router"]
