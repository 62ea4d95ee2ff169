"""A local write-ahead spool: batches that could not be inserted, kept durable on disk.

A spool file holds the export requests of one failed batch as they arrived on the wire
(protobuf), so replay decodes them exactly as the first attempt did. Files are written to a
temporary name, fsynced, then renamed: a crash leaves either a whole file or none.

File format: ``THSPOOL1``, one byte of signal (``t`` traces, ``l`` logs), then records of
``u32 length | u32 crc32 | payload``, little-endian.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from tracehouse.ingest import metrics
from tracehouse.model import Signal

log = logging.getLogger(__name__)

_MAGIC = b"THSPOOL1"
_RECORD = struct.Struct("<II")
_SIGNAL_BYTE = {Signal.TRACES: b"t", Signal.LOGS: b"l"}
_BYTE_SIGNAL = {v: k for k, v in _SIGNAL_BYTE.items()}


class SpoolFull(Exception):
    """The spool has no room for this batch (``spool_max_bytes``)."""


class SpoolCorrupt(Exception):
    """A spool file cannot be read back; it is set aside as ``*.corrupt``."""


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    signal: Signal
    payloads: list[bytes]

    @property
    def token(self) -> str:
        """The insert deduplication token of this batch (stable across replays)."""
        return self.path.stem.partition("-")[2]


class Spool:
    """Directory of spool files, bounded by ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = directory
        self._max = max_bytes
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):
            stale.unlink()
        self._bytes = sum(p.stat().st_size for p in self.pending())
        self._publish()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def pending(self) -> list[Path]:
        """Spool files, oldest first."""
        return sorted(self._dir.glob("*.spool"))

    def write(self, signal: Signal, payloads: list[bytes], token: str | None = None) -> Path:
        """Durably store one batch; raises SpoolFull or OSError if it cannot."""
        size = len(_MAGIC) + 1 + sum(_RECORD.size + len(p) for p in payloads)
        with self._lock:
            if self._bytes + size > self._max:
                raise SpoolFull(
                    f"spool holds {self._bytes} bytes; a batch of {size} would pass "
                    f"spool_max_bytes={self._max}"
                )
            self._bytes += size
        name = f"{time.time_ns():020d}-{token or uuid.uuid4().hex}"
        final = self._dir / f"{name}.spool"
        tmp = self._dir / f"{name}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(_MAGIC + _SIGNAL_BYTE[signal])
                for payload in payloads:
                    out.write(_RECORD.pack(len(payload), zlib.crc32(payload)))
                    out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            _fsync_dir(self._dir)
        except BaseException:
            with self._lock:
                self._bytes -= size
            tmp.unlink(missing_ok=True)
            raise
        self._publish()
        return final

    def read(self, path: Path) -> SpoolEntry:
        data = path.read_bytes()
        if len(data) < len(_MAGIC) + 1 or not data.startswith(_MAGIC):
            raise self._corrupt(path, "bad header")
        signal = _BYTE_SIGNAL.get(data[len(_MAGIC) : len(_MAGIC) + 1])
        if signal is None:
            raise self._corrupt(path, "unknown signal")
        payloads = []
        offset = len(_MAGIC) + 1
        while offset < len(data):
            if offset + _RECORD.size > len(data):
                raise self._corrupt(path, "truncated record header")
            length, crc = _RECORD.unpack_from(data, offset)
            offset += _RECORD.size
            payload = data[offset : offset + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise self._corrupt(path, "checksum mismatch")
            payloads.append(payload)
            offset += length
        return SpoolEntry(path, signal, payloads)

    def remove(self, path: Path) -> None:
        size = path.stat().st_size
        path.unlink()
        _fsync_dir(self._dir)
        with self._lock:
            self._bytes -= size
        self._publish()

    def _corrupt(self, path: Path, why: str) -> SpoolCorrupt:
        aside = path.with_suffix(".corrupt")
        size = path.stat().st_size
        os.replace(path, aside)
        with self._lock:
            self._bytes -= size
        self._publish()
        log.error("spool file %s is unreadable (%s); moved to %s", path.name, why, aside.name)
        return SpoolCorrupt(f"{path.name}: {why}")

    def _publish(self) -> None:
        metrics.SPOOL_BYTES.set(self._bytes)
        metrics.SPOOL_FILES.set(len(self.pending()))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
