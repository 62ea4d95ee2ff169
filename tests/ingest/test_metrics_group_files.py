"""The writer inserts a group of several metric spool files from a few joined copies
(``file()`` costs CPU per file and statement): every point of every file is stored once, in
its table, and the copies are removed afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from tests.conftest import query
from tests.ingest.otlp_factory import metrics_request
from tracehouse.app import Tracehouse
from tracehouse.ingest.spool import frame
from tracehouse.model import Signal
from tracehouse.storage import writer as writer_module
from tracehouse.storage.writer import ClickHouseWriter

S = 1_000_000_000


def _request(service: str, first_s: int) -> bytes:
    gauge = Metric(name="group.gauge")
    histogram = Metric(name="group.histogram")
    histogram.histogram.aggregation_temporality = 1  # type: ignore[assignment]
    for i in range(3):
        at = (1_700_000_000 + first_s + i) * S
        gauge.gauge.data_points.add(time_unix_nano=at, as_double=float(first_s + i))
        histogram.histogram.data_points.add(
            start_time_unix_nano=at - S,
            time_unix_nano=at,
            count=2,
            sum=3.0,
            bucket_counts=[1, 1],
            explicit_bounds=[2.0],
        )
    return metrics_request(service, gauge, histogram).SerializeToString()


@pytest.mark.parametrize("joined_bytes", [4 * 2**20, 1], ids=["one-joined-file", "several"])
def test_a_group_of_several_files_is_inserted_once(
    server: Tracehouse,
    service_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    joined_bytes: int,
) -> None:
    monkeypatch.setattr(writer_module, "_JOINED_BYTES", joined_bytes)
    spool = tmp_path / "spool"
    spool.mkdir()
    files = []
    for n in range(4):  # 4 files, the last with two requests
        payloads = [_request(service_name, 10 * n)]
        if n == 3:
            payloads.append(_request(service_name, 100))
        path = spool / f"{n:020d}-metrics-{6 * len(payloads)}.spool"
        path.write_bytes(frame(payloads))
        files.append(path)
    writer = ClickHouseWriter(lambda: server.client, True, 4096, pool_size=1)
    writer.insert(Signal.METRICS, files, dedup_token=f"group-files-{service_name}")

    counted = query(
        server,
        # ORDER BY on the whole union (inside it, it would order the last SELECT only).
        "SELECT * FROM (SELECT 'gauge', count(), uniqExact(TimeUnix), sum(Value) "
        "FROM otel_metrics_gauge WHERE ServiceName = {s:String} "
        "UNION ALL SELECT 'histogram', count(), uniqExact(TimeUnix), sum(Count) "
        "FROM otel_metrics_histogram WHERE ServiceName = {s:String}) ORDER BY 1",
        s=service_name,
    )
    # 5 requests of 3 gauge and 3 histogram points; gauge values are the seconds after the
    # first: 0..2, 10..12, 20..22, 30..32, 100..102.
    assert counted == [
        ("gauge", 15, 15, float(sum(b + i for b in (0, 10, 20, 30, 100) for i in range(3)))),
        ("histogram", 15, 15, 30),
    ]
    assert sorted(p.name for p in spool.iterdir()) == [p.name for p in files]  # no leftovers
