"""Row-batch inserts into the raw tables."""

from __future__ import annotations

import threading
from typing import Any

from tracehouse.model import COLUMNS, RowBatch


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
        settings: dict[str, Any] = {}
        if dedup_token:
            settings = {"insert_deduplicate": 1, "insert_deduplication_token": dedup_token}
        with self._lock:
            self._client.insert(
                batch.signal.table,
                batch.rows,
                column_names=list(COLUMNS[batch.signal]),
                settings=settings,
            )

    def ping(self) -> bool:
        try:
            with self._lock:
                self._client.command("SELECT 1")
            return True
        except Exception:
            return False
