"""topology: service-graph edges from spans (DESIGN.md §3).

- :mod:`tracehouse.topology.edges` — the worker's job recomputing ``otel_edges_1m``.
- :mod:`tracehouse.topology.api` — ``GET /api/v1/topology`` (nodes, edges, layout).
"""

from tracehouse.topology.edges import EdgeBuilder, EdgeWorker

__all__ = ["EdgeBuilder", "EdgeWorker"]
