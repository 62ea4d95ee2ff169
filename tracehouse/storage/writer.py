"""Inserts of spool files — OTLP export requests framed for ClickHouse's ``Protobuf`` format —
into the raw tables (SQL in ``otlp_sql``).

On the embedded engine ClickHouse reads the files itself through ``file()``; on a server the
files are the body of an ``INSERT … SELECT … FROM input(…)``. Planning one of these inserts
costs ClickHouse ~0.3 s whatever the batch size (docs/performance.md), which is why the
pipeline inserts large groups of files.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from tracehouse.model import METRIC_TABLES, Signal
from tracehouse.storage import otlp_sql

_GLOB_CHARACTERS = set("*?{}[]")
_ERROR_CODE = re.compile(r"Code: (\d+)")
# ClickHouse error codes that mean "this data cannot be read or stored", not "try again":
# parse and range errors of the input (CANNOT_PARSE_*, CANNOT_READ_ALL_DATA, INCORRECT_DATA,
# TOO_LARGE_*, PROTOBUF_*, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, DECIMAL_OVERFLOW, …).
# 444 (UNKNOWN_PROTOBUF_FORMAT, "messages are corrupted"), found by the fuzzer: a request the
# protobuf runtime accepts but ClickHouse cannot read was retried forever, blocking its signal.
_DATA_ERRORS = frozenset(
    {6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 128, 131, 321, 407, 434, 435, 436, 437, 438}
    | {444}
)


class RefusedData(Exception):
    """ClickHouse rejected the data itself; inserting it again cannot succeed."""


class ClickHouseWriter:
    """Inserts groups of spool files; a small pool of clients lets inserts run side by side.

    ``dedup_token`` becomes ClickHouse's ``insert_deduplication_token``: inserting the same
    group again with the same token (a retry after a lost answer or a crash) adds no rows.
    Items that cannot be stored (bad ids) are skipped by the same rule the receivers report;
    what passes ``limits`` is cut (``otlp_sql.ItemLimits``).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        embedded: bool,
        max_value_length: int,
        pool_size: int = 2,
        limits: otlp_sql.ItemLimits | None = None,
    ) -> None:
        self._embedded = embedded
        # ``limits`` (counts and value length) wins over ``max_value_length`` when given.
        self._limits = limits or otlp_sql.ItemLimits(max_value_length=max_value_length)
        self._clients: queue.Queue[Any] = queue.Queue()
        for _ in range(pool_size):
            self._clients.put(connect())
        self._schema_file = str(otlp_sql.PROTO_FILE) if embedded else None

    def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None) -> None:
        if not files:
            return
        settings = otlp_sql.settings_clause(signal, self._schema_file, dedup_token)
        params = self._limits.parameters()
        client = self._clients.get()
        try:
            # Metric points land in one table per point type: one insert each, under the same
            # token (deduplication is per table), so a retry after a partial failure adds
            # only what is missing.
            tables = _metric_tables(files) if signal is Signal.METRICS else signal.tables
            # Metric groups are joined into a few larger files (file() costs ClickHouse 20-40 ms
            # CPU per file read and statement, and a metric group has up to five statements).
            # Span and log groups are read as they are: one file per group cost them ~55 % more
            # peak memory at no measurable end-to-end gain (docs/performance.md, item 6).
            joined: list[Path] = []
            if signal is Signal.METRICS and self._embedded and len(files) > 1:
                joined = _joined(files)
            try:
                for table in tables:
                    structure = otlp_sql.structure(signal, table)
                    statement = _statement(signal, table)
                    self._run(client, joined or files, statement, settings, params, structure)
            finally:
                for path in joined:
                    path.unlink(missing_ok=True)
        except DatabaseError as exc:
            match = _ERROR_CODE.search(str(exc))
            if match and int(match.group(1)) in _DATA_ERRORS:
                raise RefusedData(str(exc)) from exc
            raise
        finally:
            self._clients.put(client)

    def _run(
        self,
        client: Any,
        files: list[Path],
        statement: Callable[[str], str],
        settings: str,
        params: dict[str, Any],
        structure: str,
    ) -> None:
        if self._embedded:
            source = f"file({otlp_sql.sql_string(_glob(files))}, 'Protobuf', {structure})"
            sql = f"{statement(source)}\n{settings}"
            client.command(sql, parameters=params)
            return
        data = b"".join(path.read_bytes() for path in files)
        source = f"input({structure})"
        sql = f"{statement(source)}\n{settings}\nFORMAT Protobuf"
        client.command(sql, parameters=params, data=data)

    def close(self) -> None:
        while not self._clients.empty():
            self._clients.get().close()


def _metric_tables(files: list[Path]) -> tuple[str, ...]:
    """The metric tables the points in these spool files go to. Each insert statement costs
    ClickHouse a fixed ~0.3-0.5 s to plan, so tables without points are not inserted into;
    finding them costs a protobuf parse of the files (in C), far less."""
    present: set[str] = set()
    request = ExportMetricsServiceRequest()
    for path in files:
        for payload in _unframe(path.read_bytes()):
            try:
                request.ParseFromString(payload)
            except DecodeError:
                return METRIC_TABLES  # let ClickHouse judge (and refuse) the data
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        if kind is not None:
                            present.add(f"otel_metrics_{kind}")
            if len(present) == len(METRIC_TABLES):
                return METRIC_TABLES
    return tuple(t for t in METRIC_TABLES if t in present)


# Joined files hold up to this many bytes: one file per group cost ~45 % more peak memory
# than files of ~25k points (ClickHouse reads a file's requests as one block), at the same CPU.
_JOINED_BYTES = 4 * 2**20


def _joined(files: list[Path]) -> list[Path]:
    """The group's spool files copied into a few larger ones (framed requests concatenate).
    ClickHouse's ``file()`` costs about 20 ms of CPU per file read, for each of the up to five
    metric statements of a group: 103 files of 1,000 points cost 8-9 CPU-s against 2.1-2.4
    from one file (docs/performance.md, Metrics). ``*.tmp`` names: the spool removes leftovers
    at start."""
    joined: list[Path] = []
    out = None
    try:
        for path in files:
            if out is None or out.tell() >= _JOINED_BYTES:
                if out is not None:
                    out.close()
                target = files[0].with_name(f"{files[0].stem}.joined-{len(joined)}.tmp")
                joined.append(target)
                out = target.open("wb")
            out.write(path.read_bytes())
    except BaseException:
        for target in joined:
            target.unlink(missing_ok=True)
        raise
    finally:
        if out is not None:
            out.close()
    return joined


def _unframe(data: bytes) -> list[bytes]:
    """The requests of a spool file: each preceded by its length as a protobuf varint."""
    payloads = []
    offset = 0
    while offset < len(data):
        size = shift = 0
        while True:
            byte = data[offset]
            offset += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        payloads.append(data[offset : offset + size])
        offset += size
    return payloads


def _statement(signal: Signal, table: str) -> Callable[[str], str]:
    """The insert into ``table`` of what a source (``file(…)`` / ``input(…)``) holds."""
    if signal is Signal.METRICS:
        return lambda source: otlp_sql.metric_insert_statement(table, source)
    return lambda source: otlp_sql.insert_statement(signal, source)


def _glob(files: list[Path]) -> str:
    """One ``file()`` path naming all ``files`` (they share the spool directory)."""
    directory = files[0].parent
    if _GLOB_CHARACTERS & set(str(directory)):
        raise ValueError(f"spool directory {directory} must not contain any of * ? {{ }} [ ]")
    if len(files) == 1:
        return str(files[0])
    return f"{directory}/{{{','.join(f.name for f in files)}}}"
