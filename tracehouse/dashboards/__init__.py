"""dashboards: the SRE web UI served by the query role (DESIGN.md §3), plus Grafana dashboards
(``dashboards/grafana/``) for teams that already run Grafana.

The UI is static files shipped as package data (``static/``): hand-written ES modules, SVG and
CSS, no build step, no CDN. It reads only the public HTTP API under ``/api/v1`` (and
``/openapi.json`` to learn which optional endpoints this server has), so everything it shows
a script can get too. :func:`ui_router` serves ``index.html`` at ``/`` and the assets under
``/ui/``; it adds no route that could shadow ``/api``, ``/jaeger``, ``/metrics`` or the health
checks. Pages and URL scheme: docs/ui.md.
"""

from tracehouse.dashboards.ui import STATIC_DIR, ui_router

__all__ = ["STATIC_DIR", "ui_router"]
