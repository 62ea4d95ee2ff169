"""Serving the web UI: ``GET /`` is the single page, ``/ui/*`` its modules and styles."""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# The UI's files, installed as package data of tracehouse.dashboards (pyproject.toml).
STATIC_DIR = Path(__file__).parent / "static"

# The page and its modules change with every release and are tiny: make browsers revalidate
# (cheap 304s) so that an upgraded server never runs an old module next to a new one.
_NO_STALE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    """Static files with revalidation headers."""

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_NO_STALE)
        return response


def ui_router() -> APIRouter:
    """``GET /`` (the UI's page) and ``/ui/`` (its assets), hidden from the OpenAPI schema."""
    if not (STATIC_DIR / "index.html").is_file():
        raise RuntimeError(
            f"the web UI's files are missing from {STATIC_DIR}: reinstall tracehouse"
        )
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_STALE)

    router.routes.append(Mount("/ui", app=_Assets(directory=STATIC_DIR), name="ui"))
    return router
