"""Bytes on disk per span in each table, after merges: the storage figure of
docs/production.md ("Sizing").

    python deploy/tools/storage_per_span.py [SPANS]

Starts an ingest-only tracehouse on a temporary embedded engine, sends SPANS spans (default
300,000) made by the ingest bench's generator (10 attributes each, 512 per request, random
trace ids) over OTLP/HTTP, waits until they are inserted, merges every table (OPTIMIZE FINAL)
and prints rows and bytes per span per table. The data directory is removed at the end.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import httpx

from tracehouse.app import Tracehouse
from tracehouse.bench.ingest import build_requests
from tracehouse.config import Settings

PARTS_SQL = """
SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes)
FROM system.parts
WHERE active AND database = currentDatabase()
GROUP BY table
ORDER BY table
"""


def main(spans: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="tracehouse-size-"))
    settings = Settings(
        data_dir=data, host="127.0.0.1", grpc_port=0, http_port=0, api_port=0, roles=["ingest"]
    )
    app = Tracehouse(settings)
    app.start()
    try:
        requests = build_requests(spans, 512, 10)
        url = f"http://127.0.0.1:{app.ports.http}/v1/traces"
        with httpx.Client(timeout=60) as client:
            for body in requests:
                response = client.post(
                    url, content=body, headers={"Content-Type": "application/x-protobuf"}
                )
                response.raise_for_status()
        assert app.pipeline is not None and app.pipeline.wait_stored(600)
        for table in ("otel_traces", "otel_traces_trace_id_ts", "otel_red_1m", "otel_db_1m"):
            app.client.command(f"OPTIMIZE TABLE {table} FINAL")
        payload = sum(len(body) for body in requests) / spans
        print(f"{spans} spans, OTLP protobuf {payload:.0f} bytes/span")
        for table, rows, disk, raw in app.client.query(PARTS_SQL).result_rows:
            print(
                f"{table:30} rows {rows:>9}  on disk {disk / spans:7.1f} B/span"
                f"  uncompressed {raw / spans:7.1f} B/span"
            )
    finally:
        app.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300_000)
