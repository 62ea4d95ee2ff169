"""Keys of recently accepted requests, on disk, so that a retry is recognised after a crash.

An exporter that loses its connection before the answer arrives sends the same request again,
possibly to the process that restarted after a ``kill -9``. The pipeline remembers request keys
in memory; this journal carries them across a restart. It is appended (one 24-byte record per
request: wall-clock nanoseconds, 16-byte key) after the request's spool file is durable, and
fsynced before any spool file is deleted, so a key is lost neither from the spool nor from here.
A request whose spool file is still present is recognised from the file itself (its requests are
hashed again at start), which covers a crash between the spool write and the journal append.

Two files bound the journal: when ``accepted.keys`` holds ``max_entries`` records it becomes
``accepted.keys.1`` (replacing the one before) and a new file starts. A torn record at the end
(a crash in mid-append) is dropped at start, when the journal is rewritten from what it held.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from pathlib import Path

from tracehouse.model import Signal

_RECORD = struct.Struct(">q16s")
_CURRENT = "accepted.keys"
_PREVIOUS = "accepted.keys.1"


def request_key(signal: Signal, payload: bytes) -> bytes:
    """The identity of an export request: a digest of its protobuf bytes, per signal."""
    return hashlib.blake2b(payload, digest_size=16, person=signal.value.encode()).digest()


class KeyJournal:
    """Append-only journal of accepted request keys (see module docstring)."""

    def __init__(self, directory: Path, max_entries: int) -> None:
        self._current = directory / _CURRENT
        self._previous = directory / _PREVIOUS
        self._max = max(1, max_entries)
        self._lock = threading.Lock()
        self._fd = -1
        self._count = 0

    def load(self, window_s: float) -> list[tuple[float, bytes]]:
        """The keys accepted within the last ``window_s`` seconds as (age in seconds, key),
        oldest first; leaves the journal rewritten with just those and open for appending."""
        now_ns = time.time_ns()
        horizon = now_ns - int(window_s * 1e9)
        found: list[tuple[int, bytes]] = []
        for path in (self._previous, self._current):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            usable = len(data) - len(data) % _RECORD.size
            found.extend(
                record for record in _RECORD.iter_unpack(data[:usable]) if record[0] >= horizon
            )
        found.sort(key=lambda record: record[0])  # stable: same-instant keys keep their order
        kept = found[-self._max :]
        tmp = self._current.with_name(_CURRENT + ".tmp")
        with open(tmp, "wb") as out:
            out.write(b"".join(_RECORD.pack(when, key) for when, key in kept))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._current)
        self._previous.unlink(missing_ok=True)
        with self._lock:
            self._fd = os.open(self._current, os.O_WRONLY | os.O_APPEND)
            self._count = len(kept)
        return [(max(0.0, (now_ns - when) / 1e9), key) for when, key in kept]

    def append(self, keys: list[bytes]) -> None:
        """Record ``keys`` as accepted now (durable at the next ``sync``)."""
        if not keys:
            return
        now_ns = time.time_ns()
        data = b"".join(_RECORD.pack(now_ns, key) for key in keys)
        with self._lock:
            if self._fd < 0:
                return
            if self._count + len(keys) > self._max:
                os.fsync(self._fd)
                os.close(self._fd)
                os.replace(self._current, self._previous)
                self._fd = os.open(self._current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._count = 0
            os.write(self._fd, data)
            self._count += len(keys)

    def sync(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
