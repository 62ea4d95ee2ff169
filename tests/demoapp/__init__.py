"""A real multi-service demo application exporting OpenTelemetry traces to tracehouse.

Four services, each a separate process with its own OpenTelemetry SDK ``TracerProvider``
(``service.name`` = ``<role>-<run id>``) exporting with the real OTLP exporter (HTTP/protobuf
or gRPC), call each other over real HTTP on 127.0.0.1 with W3C trace context::

    (test) ──▶ frontend ──▶ checkout ──▶ inventory ──▶ SQLite (virtual database node "sqlite")
                                    └──▶ payment (every 5th call: HTTP 500, error span;
                                                  checkout retries once)

- Servers: Starlette on uvicorn (port 0) wrapped in the official ASGI instrumentation
  (server spans ``GET /checkout``, ``POST /orders``, ``POST /reserve``,
  ``GET /recommendations``, ``POST /charge`` with ``http.*`` attributes); frontend answers
  each request's trace id in a W3C ``traceresponse`` header, and its server spans are roots
  (the test sends no trace context), so the service graph has ``user`` → frontend.
- Clients: httpx with the official httpx instrumentation (client spans, ``traceparent``).
- inventory runs real SQL on a SQLite file, each statement a CLIENT span with
  ``db.system.name=sqlite``, ``db.query.text``, ``db.operation.name`` (instrumented by hand:
  docs/decisions/0011-demo-app.md): per order a lookup, an update and an insert whose literals
  differ per call, and for recommendations an ``IN`` list of varying length plus a
  deliberately slow recursive CTE (sized at start to take about 0.35 s, at least 300,000
  rows), so the slow statement's fingerprint has by far the largest total time.

Public API (used by the query and UI tests; keep it stable)::

    run = run_demo("http://127.0.0.1:4318", rounds=12, protocol="http")
    run.services["inventory"], run.trace_ids, run.payment_failures, run.slow_statement,
    run.sql("slow"), run.operation("payment", "POST /charge", "server"), run.start, run.end

:func:`run_demo` starts the processes, sends the requests, stops the processes (their tracer
providers shut down, so every span is exported) and returns a :class:`DemoRun`; a default
run (12 rounds) takes a few seconds. It raises :class:`DemoError` if any span was not
delivered.
"""

from tests.demoapp.runner import ROLES, DemoError, DemoRun, OperationCount, SqlCall, run_demo

__all__ = ["ROLES", "DemoError", "DemoRun", "OperationCount", "SqlCall", "run_demo"]
