"""Between the OTLP receivers and ClickHouse: acknowledge once on disk, insert in large groups.

Receivers submit validated export requests (protobuf bytes) and wait on a future. A spool
thread writes everything submitted since its last write into one spool file and fsyncs it
(every ``spool_flush_ms`` at most, group commit); the futures complete then, so a request is
acknowledged only when its data is durable. Inserter threads take the oldest spool files of a
signal in groups of up to ``batch_max_rows`` items and insert each group with one statement,
which is what ClickHouse wants (few large inserts; planning one costs it ~0.3 s).

Bounds: requests waiting for the spool write are limited by ``queue_max_rows`` items, and the
spool by ``spool_max_bytes``; past either, submit refuses at once with ``Overloaded`` (the
receivers answer 503 / UNAVAILABLE with a retry delay). While ClickHouse fails, groups are
retried with backoff under the same deduplication token and the spool absorbs the gap.

A request is known by its key (a digest of its bytes): a retry of one stored or in flight gets
the original's outcome instead of being stored again, for ``dedup_window_s`` — across a restart
or a crash too, through the key journal beside the spool (``journal.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tracehouse.ingest import metrics
from tracehouse.ingest.journal import KeyJournal
from tracehouse.ingest.spool import Group, Spool, SpoolFull
from tracehouse.model import Signal
from tracehouse.storage import RefusedData

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where spool files go: storage's ClickHouseWriter in production."""

    def insert(self, signal: Signal, files: list[Path], dedup_token: str | None = None) -> None:
        """Store the items of these spool files durably, or raise: ``RefusedData`` when the
        store rejects the data itself (retrying cannot help), anything else for an outage."""
        ...


class Overloaded(Exception):
    """Too much is waiting; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(Exception):
    """The data could not be made durable; nothing was acknowledged."""


@dataclass(frozen=True)
class PipelineLimits:
    batch_max_rows: int = 50_000
    # Metric points are small and each metrics group costs up to five inserts (one per point
    # type) of fixed planning cost, so their groups hold this many times more (decision 0013).
    metric_batch_factor: int = 4
    queue_max_rows: int = 500_000
    spool_flush_s: float = 0.01
    retry_interval_s: float = 5.0
    writers_per_signal: int = 2
    dedup_window_s: float = 600.0
    dedup_max_entries: int = 200_000
    drain_timeout_s: float = 30.0


@dataclass
class _Pending:
    signal: Signal
    payload: bytes
    items: int
    future: Future[None]
    key: bytes | None


class _RecentRequests:
    """Futures of recent requests by content digest, so a retried request is not stored twice."""

    def __init__(self, window_s: float, max_entries: int) -> None:
        self._window = window_s
        self._max = max_entries
        self._items: OrderedDict[bytes, tuple[float, Future[None]]] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_add(self, key: bytes, future: Future[None]) -> Future[None] | None:
        """The live future for ``key`` if it is known and did not fail; else remember ``future``."""
        now = time.monotonic()
        with self._lock:
            while self._items:
                oldest_key, (when, _) = next(iter(self._items.items()))
                if now - when <= self._window and len(self._items) < self._max:
                    break
                del self._items[oldest_key]
            known = self._items.get(key)
            if known is not None:
                existing = known[1]
                if not (existing.done() and existing.exception() is not None):
                    return existing
            if self._max > 0:
                self._items[key] = (now, future)
            return None

    def seed(self, known: list[tuple[float, bytes]]) -> None:
        """Remember requests stored by an earlier run, given as (age in seconds, key)."""
        now = time.monotonic()
        done: Future[None] = Future()
        done.set_result(None)
        with self._lock:
            for age, key in sorted(known, reverse=True):  # oldest first, as live entries go
                if age <= self._window and self._max > 0:
                    self._items[key] = (now - age, done)
            while len(self._items) > self._max:
                self._items.popitem(last=False)


class IngestPipeline:
    """Durable-before-ack, bounded, group-inserting writer (see module docstring)."""

    def __init__(self, sink: Sink, spool: Spool, limits: PipelineLimits) -> None:
        self._sink = sink
        self._spool = spool
        self._limits = limits
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._pending_items: dict[Signal, int] = dict.fromkeys(Signal, 0)
        self._recent = _RecentRequests(limits.dedup_window_s, limits.dedup_max_entries)
        # Requests stored before a restart (or crash) are still recognised when retried.
        self._journal: KeyJournal | None = None
        if limits.dedup_max_entries > 0:
            self._journal = KeyJournal(spool.directory, limits.dedup_max_entries)
            known = self._journal.load(limits.dedup_window_s)
            known += [(0.0, key) for key in spool.request_keys()]
            self._recent.seed(known)
        self._stopping = False
        self._spooled = threading.Condition()
        self._draining_until = 0.0
        self._failing: set[Signal] = set()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the spool writer and the inserters (which first take what an earlier run left)."""
        threads = [threading.Thread(target=self._spool_loop, name="ingest-spool")]
        for signal in Signal:
            for n in range(self._limits.writers_per_signal):
                name = f"ingest-{signal.value}-{n}"
                threads.append(
                    threading.Thread(target=self._insert_loop, args=(signal,), name=name)
                )
        for thread in threads:
            thread.start()
        self._threads = threads

    def stop(self) -> None:
        """Stop accepting, spool what was accepted, try to insert the spool within
        ``drain_timeout_s`` (what remains is inserted at the next start), then stop."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        with self._spooled:
            self._draining_until = time.monotonic() + self._limits.drain_timeout_s
            self._spooled.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        if self._journal is not None:
            self._journal.close()

    def wait_stored(self, timeout_s: float) -> bool:
        """Wait until everything acknowledged so far is in ClickHouse; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                waiting = bool(self._pending)
            if not waiting and self._spool.file_count() == 0:
                return True
            time.sleep(0.02)
        return False

    @property
    def degraded(self) -> bool:
        """True while inserts into ClickHouse fail (data waits in the spool)."""
        return bool(self._failing)

    # -- submit ------------------------------------------------------------------------------

    def submit(
        self, signal: Signal, payload: bytes, items: int, key: bytes | None = None
    ) -> Future[None]:
        """Queue a request; the future completes when it is on disk (or fails if it cannot be).

        ``payload`` is the export request (protobuf) holding ``items`` storable spans or log
        records; ``key`` is a digest of it, used to recognise a retry of a request already
        stored or in flight.
        """
        future: Future[None] = Future()
        if key is not None:
            existing = self._recent.get_or_add(key, future)
            if existing is not None:
                metrics.ITEMS.labels(signal.value, "duplicate").inc(items)
                return existing
        if not items:
            future.set_result(None)
            return future
        try:
            self._enqueue(_Pending(signal, payload, items, future, key))
        except (Overloaded, Unavailable) as exc:
            future.set_exception(exc)  # a retry of this request must not wait on it
            raise
        return future

    def _enqueue(self, pending: _Pending) -> None:
        signal = pending.signal
        with self._cond:
            if self._stopping:
                raise Unavailable("tracehouse is shutting down; retry against another instance")
            queued = self._pending_items[signal]
            if queued and queued + pending.items > self._limits.queue_max_rows:
                raise Overloaded(
                    f"{queued} {signal.value} items are waiting for the disk "
                    f"(queue_max_rows={self._limits.queue_max_rows}); retry shortly"
                )
            room = self._spool.room_bytes()
            if room < len(pending.payload):
                raise Overloaded(
                    f"the spool is full ({self._spool.size_bytes} bytes, waiting for "
                    "ClickHouse); retry later",
                    retry_after_s=5,
                )
            self._pending.append(pending)
            self._pending_items[signal] = queued + pending.items
            metrics.QUEUE_ROWS.labels(signal.value).set(self._pending_items[signal])
            self._cond.notify_all()

    # -- spool writer ------------------------------------------------------------------------

    def _spool_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending and self._stopping:
                    return
            time.sleep(self._limits.spool_flush_s)  # let concurrent requests join this write
            with self._cond:
                taken, self._pending = self._pending, []
                for signal in Signal:
                    self._pending_items[signal] = 0
                    metrics.QUEUE_ROWS.labels(signal.value).set(0)
            for signal in Signal:
                mine = [p for p in taken if p.signal is signal]
                if mine:
                    self._write(signal, mine)

    def _write(self, signal: Signal, taken: list[_Pending]) -> None:
        items = sum(p.items for p in taken)
        started = time.perf_counter()
        try:
            self._spool.write(signal, [p.payload for p in taken], items)
        except (SpoolFull, OSError) as exc:
            log.error("could not spool %d %s items: %s", items, signal.value, exc)
            error = Unavailable(f"could not store the data durably ({exc}); retry later")
            for pending in taken:
                pending.future.set_exception(error)
            return
        if self._journal is not None:
            try:
                self._journal.append([p.key for p in taken if p.key is not None])
            except OSError as exc:  # the data is safe; only a retry after a crash may duplicate
                log.warning("could not journal %d request keys: %s", len(taken), exc)
        metrics.SPOOL_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.ITEMS.labels(signal.value, "accepted").inc(items)
        for pending in taken:
            pending.future.set_result(None)
        with self._spooled:
            self._spooled.notify_all()

    # -- inserters ---------------------------------------------------------------------------

    def _insert_loop(self, signal: Signal) -> None:
        while not self._past_drain_deadline():
            limit = self._limits.batch_max_rows
            if signal is Signal.METRICS:
                limit *= self._limits.metric_batch_factor
            group = self._spool.claim(signal, limit)
            if group is not None:
                self._insert_until_done(group)
                continue
            with self._cond:
                if self._stopping and not self._pending:
                    return  # stopped, and everything spooled is inserted
            with self._spooled:
                self._spooled.wait(0.5)

    def _past_drain_deadline(self) -> bool:
        return self._stopping and time.monotonic() > self._draining_until

    def _insert_until_done(self, group: Group) -> None:
        """Insert ``group`` (retrying outages under the same token) or set refused data aside."""
        signal = group.signal
        while True:
            started = time.perf_counter()
            try:
                self._sink.insert(signal, group.paths, dedup_token=group.token)
            except RefusedData as exc:
                metrics.BATCHES.labels(signal.value, "refused").inc()
                # Narrow it down to the request ClickHouse refuses: file by file, then request
                # by request (re-encoded); only what is still refused alone is set aside.
                pieces = (
                    self._spool.split(group)
                    if len(group.files) > 1
                    else self._spool.split_requests(group)
                )
                if not pieces:
                    self._spool.set_aside(group, str(exc))
                for piece in pieces:
                    self._insert_until_done(piece)
                return
            except Exception as exc:
                metrics.BATCHES.labels(signal.value, "failed").inc()
                self._set_failing(signal, True)
                log.warning(
                    "insert of %d %s items failed (%s); retrying in %gs",
                    group.items,
                    signal.value,
                    exc,
                    self._limits.retry_interval_s,
                )
                if self._past_drain_deadline():
                    return  # stays in the spool, with its manifest, for the next start
                time.sleep(self._limits.retry_interval_s)
                continue
            metrics.FLUSH_SECONDS.labels(signal.value).observe(time.perf_counter() - started)
            metrics.BATCHES.labels(signal.value, "inserted").inc()
            self._sync_journal()
            self._spool.complete(group)
            self._set_failing(signal, False)
            return

    def _sync_journal(self) -> None:
        """Make the journal durable before spool files (which also prove their keys) go."""
        if self._journal is None:
            return
        try:
            self._journal.sync()
        except OSError as exc:
            log.warning("could not sync the request-key journal: %s", exc)

    def _set_failing(self, signal: Signal, failing: bool) -> None:
        if failing:
            self._failing.add(signal)
        else:
            self._failing.discard(signal)
        metrics.DEGRADED.set(1 if self._failing else 0)
