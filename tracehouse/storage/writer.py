"""Row-batch inserts into the raw tables, sent to ClickHouse in Arrow format.

Rows become Arrow columns in C++ (pyarrow), and ClickHouse parses Arrow natively; this costs a
fraction of the CPU of building ClickHouse's Native format value by value in Python
(docs/performance.md). Timestamps travel as Arrow ``timestamp[ns]``, so nanoseconds survive.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from tracehouse.model import COLUMNS, RowBatch, Signal

_STR = pa.string()
_MAP = pa.map_(pa.string(), pa.string())
_TS = pa.timestamp("ns")
_U32 = pa.uint32()

# Arrow type of each column, in the order of model.COLUMNS.
_ARROW_TYPES: dict[Signal, tuple[pa.DataType, ...]] = {
    Signal.TRACES: (
        _TS,
        _STR,
        _STR,
        _STR,
        _STR,
        _STR,
        _STR,
        _STR,
        _MAP,
        _STR,
        _STR,
        _MAP,
        pa.uint64(),
        _STR,
        _STR,
        pa.list_(_TS),
        pa.list_(_STR),
        pa.list_(_MAP),
        pa.list_(_STR),
        pa.list_(_STR),
        pa.list_(_STR),
        pa.list_(_MAP),
        _MAP,
        _U32,
        _U32,
        _U32,
    ),
    Signal.LOGS: (
        _TS,
        _STR,
        _STR,
        pa.uint8(),
        _STR,
        pa.uint8(),
        _STR,
        _STR,
        _STR,
        _MAP,
        _STR,
        _STR,
        _STR,
        _MAP,
        _MAP,
        _STR,
        _U32,
    ),
}


class ClickHouseWriter:
    """Inserts row batches; one insert per call, serialised per client.

    ``dedup_token`` becomes ClickHouse's ``insert_deduplication_token``: inserting the same
    batch again with the same token (a spool replay after a crash) adds no rows.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def insert(self, batch: RowBatch, dedup_token: str | None = None) -> None:
        if not batch.rows:
            return
        table = to_arrow(batch)
        settings: dict[str, Any] = {}
        if dedup_token:
            settings = {"insert_deduplicate": 1, "insert_deduplication_token": dedup_token}
        with self._lock:
            self._client.insert_arrow(batch.signal.table, table, settings=settings)


def to_arrow(batch: RowBatch) -> pa.Table:
    """The batch as an Arrow table with the raw table's column names."""
    columns = zip(*batch.rows, strict=True)
    types = _ARROW_TYPES[batch.signal]
    arrays = [pa.array(col, type=typ) for col, typ in zip(columns, types, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(COLUMNS[batch.signal]))
