"""The write-ahead spool: every accepted request is on disk before it is acknowledged.

A spool file holds the export requests of one flush, exactly as ClickHouse's ``Protobuf``
format reads them (each request preceded by its varint length), so the insert reads the file
itself and Python never touches the data again. Files are written to a temporary name,
fsynced, renamed, and the directory fsynced: a crash leaves a whole file or none.

File names sort by arrival and carry what the inserter needs:
``<sequence>-<signal>-<items>.spool``. Files are inserted in *groups* (one ClickHouse insert
each); a group is fixed in a manifest (``<token>.group``) before its first insert, so that after
a crash the same files are retried with the same deduplication token and a group that had in
fact landed adds nothing.

When ClickHouse refuses a file, the file is split into one file per request, each re-encoded
as the protobuf runtime that validated it reads it (``split_requests``), so that only a request
ClickHouse cannot read is set aside — not the other clients' requests written with it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracehouse.ingest import metrics
from tracehouse.ingest.journal import request_key
from tracehouse.model import Signal

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{20})-(traces|logs|metrics)-(\d+)\.spool$")


class SpoolFull(Exception):
    """The spool has no room for this data (``spool_max_bytes``)."""


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    signal: Signal
    items: int
    size: int


@dataclass(frozen=True)
class Group:
    """Spool files inserted together under one deduplication token."""

    token: str
    signal: Signal
    files: tuple[SpoolFile, ...]

    @property
    def items(self) -> int:
        return sum(f.items for f in self.files)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]


def frame(payloads: Iterable[bytes]) -> bytes:
    """Requests framed as ClickHouse's ``Protobuf`` format reads them (varint length first)."""
    out = bytearray()
    for payload in payloads:
        size = len(payload)
        while size >= 0x80:
            out.append((size & 0x7F) | 0x80)
            size >>= 7
        out.append(size)
        out += payload
    return bytes(out)


def unframe(data: bytes) -> list[bytes]:
    """The requests of a spool file (the inverse of ``frame``)."""
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


class Spool:
    """Directory of spool files and group manifests, bounded by ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = directory
        self._max = max_bytes
        self._lock = threading.Lock()
        self._seq = time.time_ns()
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):
            stale.unlink()
        self._files: dict[Signal, list[SpoolFile]] = {s: [] for s in Signal}
        self._claimed: set[Path] = set()
        self._recovered: list[Group] = []
        self._bytes = 0
        for path in sorted(directory.glob("*.spool")):
            found = self._parse(path)
            if found is not None:
                self._files[found.signal].append(found)
                self._bytes += found.size
        for manifest in sorted(directory.glob("*.group")):
            self._recover_group(manifest)
        self._publish()

    @property
    def directory(self) -> Path:
        return self._dir

    def request_keys(self) -> list[bytes]:
        """The keys of the requests held in the spool files (hashed again from the files)."""
        with self._lock:
            files = [f for signal_files in self._files.values() for f in signal_files]
        keys: list[bytes] = []
        for spooled in files:
            try:
                data = spooled.path.read_bytes()
            except FileNotFoundError:  # inserted and removed meanwhile
                continue
            keys.extend(request_key(spooled.signal, payload) for payload in unframe(data))
        return keys

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def room_bytes(self) -> int:
        return self._max - self._bytes

    def file_count(self) -> int:
        with self._lock:
            return sum(len(files) for files in self._files.values())

    # -- writing -----------------------------------------------------------------------------

    def write(self, signal: Signal, payloads: list[bytes], items: int) -> SpoolFile:
        """Durably store requests holding ``items`` items; raises SpoolFull or OSError."""
        data = frame(payloads)
        with self._lock:
            if self._bytes + len(data) > self._max:
                raise SpoolFull(
                    f"spool holds {self._bytes} bytes; {len(data)} more would pass "
                    f"spool_max_bytes={self._max}"
                )
            self._bytes += len(data)
            self._seq += 1
            name = f"{self._seq:020d}-{signal.value}-{items}.spool"
        final = self._dir / name
        tmp = self._dir / (name + ".tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            _fsync_dir(self._dir)
        except BaseException:
            with self._lock:
                self._bytes -= len(data)
            tmp.unlink(missing_ok=True)
            raise
        spooled = SpoolFile(final, signal, items, len(data))
        with self._lock:
            self._files[signal].append(spooled)
        self._publish()
        return spooled

    # -- groups ------------------------------------------------------------------------------

    def claim(self, signal: Signal, max_items: int) -> Group | None:
        """The next group to insert: a recovered one first, else the oldest unclaimed files up
        to ``max_items`` (at least one file). None when there is nothing to insert."""
        with self._lock:
            for group in self._recovered:
                if group.signal is signal:
                    self._recovered.remove(group)
                    return group
            chosen: list[SpoolFile] = []
            items = 0
            for spooled in self._files[signal]:
                if spooled.path in self._claimed:
                    continue
                if chosen and items + spooled.items > max_items:
                    break
                chosen.append(spooled)
                items += spooled.items
            if not chosen:
                return None
            group = Group(uuid.uuid4().hex, signal, tuple(chosen))
            self._claimed.update(group.paths)
        manifest = self._dir / f"{group.token}.group"
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(f"{signal.value}\n" + "\n".join(p.name for p in group.paths) + "\n")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, manifest)
        _fsync_dir(self._dir)
        return group

    def complete(self, group: Group) -> None:
        """The group is in ClickHouse: drop its files and manifest."""
        for spooled in group.files:
            spooled.path.unlink(missing_ok=True)
        (self._dir / f"{group.token}.group").unlink(missing_ok=True)
        _fsync_dir(self._dir)
        done = set(group.paths)
        with self._lock:
            self._files[group.signal] = [f for f in self._files[group.signal] if f.path not in done]
            self._claimed -= done
            self._bytes -= sum(f.size for f in group.files)
        self._publish()

    def set_aside(self, group: Group, reason: str) -> None:
        """ClickHouse refuses this data itself (not a connection problem): keep it out of the
        way as ``*.failed`` for an operator, and go on with the rest."""
        for spooled in group.files:
            if spooled.path.exists():
                os.replace(spooled.path, spooled.path.with_suffix(".failed"))
        (self._dir / f"{group.token}.group").unlink(missing_ok=True)
        done = set(group.paths)
        with self._lock:
            self._files[group.signal] = [f for f in self._files[group.signal] if f.path not in done]
            self._claimed -= done
            self._bytes -= sum(f.size for f in group.files)
        metrics.SPOOL_FAILED.labels(group.signal.value).inc(group.items)
        log.error(
            "ClickHouse refused %d %s items in %s (%s); files kept as *.failed",
            group.items,
            group.signal.value,
            ", ".join(p.name for p in group.paths),
            reason,
        )
        self._publish()

    def split_requests(self, group: Group) -> list[Group]:
        """One group per request of the single file of ``group``, each request re-encoded as
        the protobuf runtime reads it (ClickHouse refuses some encodings the runtime accepts,
        e.g. a bool sent as 127, a uint32 varint wider than 32 bits). Empty when that changes
        nothing (one request, already canonical): the request itself is what is refused.

        Crash-safe: the pieces are written before the file is removed, and each piece's
        deduplication token is derived from the file's name and the piece's position, so a
        split done again after a crash inserts nothing twice."""
        (spooled,) = group.files
        data = spooled.path.read_bytes()
        payloads = unframe(data)
        pieces = [_canonical(group.signal, payload) for payload in payloads]
        if len(pieces) == 1 and pieces[0][0] == payloads[0]:
            return []
        written: list[SpoolFile] = []
        for payload, items in pieces:
            framed = frame([payload])
            with self._lock:
                self._seq += 1
                name = f"{self._seq:020d}-{group.signal.value}-{items}.spool"
            final = self._dir / name
            tmp = self._dir / (name + ".tmp")
            with open(tmp, "wb") as out:
                out.write(framed)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            written.append(SpoolFile(final, group.signal, items, len(framed)))
        singles = [
            Group(f"{spooled.path.stem}-{n}", group.signal, (piece,))
            for n, piece in enumerate(written)
        ]
        for single in singles:
            manifest = self._dir / f"{single.token}.group"
            manifest.write_text(f"{single.signal.value}\n{single.files[0].path.name}\n")
        _fsync_dir(self._dir)
        spooled.path.unlink(missing_ok=True)
        (self._dir / f"{group.token}.group").unlink(missing_ok=True)
        _fsync_dir(self._dir)
        with self._lock:
            kept = [f for f in self._files[group.signal] if f.path != spooled.path]
            self._files[group.signal] = kept + written
            self._claimed.discard(spooled.path)
            self._claimed.update(piece.path for piece in written)
            self._bytes += sum(piece.size for piece in written) - spooled.size
        self._publish()
        return singles

    def split(self, group: Group) -> list[Group]:
        """One group per file of ``group`` (to find the file ClickHouse refuses)."""
        (self._dir / f"{group.token}.group").unlink(missing_ok=True)
        singles = [Group(uuid.uuid4().hex, group.signal, (f,)) for f in group.files]
        for single in singles:
            manifest = self._dir / f"{single.token}.group"
            manifest.write_text(f"{single.signal.value}\n{single.files[0].path.name}\n")
        _fsync_dir(self._dir)
        return singles

    # -- internals ---------------------------------------------------------------------------

    def _parse(self, path: Path) -> SpoolFile | None:
        match = _NAME.match(path.name)
        if match is None:
            log.warning("ignoring unexpected file in the spool: %s", path.name)
            return None
        self._seq = max(self._seq, int(match.group(1)))
        return SpoolFile(path, Signal(match.group(2)), int(match.group(3)), path.stat().st_size)

    def _recover_group(self, manifest: Path) -> None:
        lines = manifest.read_text().split()
        if not lines:
            manifest.unlink()
            return
        signal = Signal(lines[0])
        by_name = {f.path.name: f for f in self._files[signal]}
        files = tuple(by_name[name] for name in lines[1:] if name in by_name)
        if not files:  # its files were inserted and removed just before a crash
            manifest.unlink()
            return
        group = Group(manifest.stem, signal, files)
        self._claimed.update(group.paths)
        self._recovered.append(group)

    def _publish(self) -> None:
        metrics.SPOOL_BYTES.set(self._bytes)
        metrics.SPOOL_FILES.set(sum(len(files) for files in self._files.values()))


# The export request message of each signal (what spool files hold; the receivers parse into it).
REQUEST_TYPES: dict[Signal, type[Message]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
    Signal.METRICS: ExportMetricsServiceRequest,
}


def _canonical(signal: Signal, payload: bytes) -> tuple[bytes, int]:
    """``payload`` re-encoded as the protobuf runtime parsed it, without the fields it did not
    know (what the receiver validated), and its item count (spans, log records or data
    points, as sent); unchanged with a count of 1 if it does not parse."""
    request = REQUEST_TYPES[signal]()
    try:
        request.ParseFromString(payload)
    except (DecodeError, RecursionError):
        return payload, 1
    request.DiscardUnknownFields()
    return request.SerializeToString(), max(1, _items(request))


def _items(request: Any) -> int:
    if isinstance(request, ExportTraceServiceRequest):
        return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
    if isinstance(request, ExportLogsServiceRequest):
        return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
    points = 0
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
    return points


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
