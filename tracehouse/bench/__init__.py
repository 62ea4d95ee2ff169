"""Benchmarks behind ``tracehouse bench``.

- :mod:`tracehouse.bench.ingest` — ``bench ingest``: OTLP ingest throughput, CPU, peak RSS.
- :mod:`tracehouse.bench.query` — ``bench query``: read-API latency on seeded spans, next to
  the same questions answered by scanning raw spans.

The submodules are imported by the command that runs them (each pulls in heavy dependencies).
"""
