"""The batching writer between OTLP receivers and storage.

Receivers submit decoded rows and wait on a future. A writer thread per signal gathers what
has been submitted (flushing at ``batch_max_rows`` rows or ``batch_max_wait_ms`` after the
oldest arrival) and inserts it in one go; the futures complete only once the rows are durable:
inserted, or — when the insert fails — written to the local spool. A request is therefore
acknowledged only when its data is durable, and memory is bounded by ``queue_max_rows``:
past it, submit refuses at once with ``Overloaded`` (the receivers answer 503/UNAVAILABLE).

Every flush carries an insert deduplication token; a batch that failed is spooled under the
same token, so a replay of an insert that had in fact landed adds nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from tracehouse.ingest import metrics
from tracehouse.ingest.spool import Spool, SpoolCorrupt, SpoolEntry
from tracehouse.model import RowBatch, Signal

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where batches go: storage's ClickHouseWriter in production."""

    def insert(self, batch: RowBatch, dedup_token: str | None = None) -> None: ...


class Overloaded(Exception):
    """Too much is queued; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(Exception):
    """The data could be neither inserted nor spooled; nothing was acknowledged."""


# Decodes the wire payloads of a spooled batch back into rows (set by the receiver).
Redecoder = Callable[[Signal, list[bytes]], RowBatch]


@dataclass(frozen=True)
class PipelineLimits:
    batch_max_rows: int = 20_000
    batch_max_wait_s: float = 0.1
    queue_max_rows: int = 400_000
    replay_interval_s: float = 5.0
    dedup_window_s: float = 600.0
    dedup_max_entries: int = 200_000


@dataclass
class _Pending:
    batch: RowBatch
    payload: bytes
    future: Future[None]
    arrived: float


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


class IngestPipeline:
    """Bounded, batching, durable-before-ack writer (see module docstring)."""

    def __init__(
        self, sink: Sink, spool: Spool, redecode: Redecoder, limits: PipelineLimits
    ) -> None:
        self._sink = sink
        self._spool = spool
        self._redecode = redecode
        self._limits = limits
        self._cond = threading.Condition()
        self._queues: dict[Signal, deque[_Pending]] = {s: deque() for s in Signal}
        self._queued_rows: dict[Signal, int] = dict.fromkeys(Signal, 0)
        self._recent = _RecentRequests(limits.dedup_window_s, limits.dedup_max_entries)
        self._stopping = False
        self._degraded = threading.Event()
        self._stop_replay = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Replay what an earlier run left in the spool, then start the writer threads."""
        self.replay_spool()
        for signal in Signal:
            thread = threading.Thread(
                target=self._write_loop, args=(signal,), name=f"ingest-writer-{signal.value}"
            )
            thread.start()
            self._threads.append(thread)
        replayer = threading.Thread(target=self._replay_loop, name="ingest-spool-replay")
        replayer.start()
        self._threads.append(replayer)

    def stop(self) -> None:
        """Flush everything accepted (inserting or spooling it), then stop the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stop_replay.set()
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    # -- submit ------------------------------------------------------------------------------

    def submit(self, batch: RowBatch, payload: bytes, key: bytes | None = None) -> Future[None]:
        """Queue rows; the future completes when they are durable (or fails if they cannot be).

        ``payload`` is the request as received (protobuf), kept for the spool; ``key`` is a
        digest of it, used to recognise a retry of a request already stored or in flight.
        """
        future: Future[None] = Future()
        signal = batch.signal
        if key is not None:
            existing = self._recent.get_or_add(key, future)
            if existing is not None:
                metrics.ITEMS.labels(signal.value, "duplicate").inc(len(batch))
                return existing
        if not batch.rows:
            future.set_result(None)
            return future
        try:
            self._enqueue(_Pending(batch, payload, future, time.monotonic()))
        except (Overloaded, Unavailable) as exc:
            future.set_exception(exc)  # a retry of this request must not wait on it
            raise
        return future

    def _enqueue(self, pending: _Pending) -> None:
        signal = pending.batch.signal
        with self._cond:
            if self._stopping:
                raise Unavailable("tracehouse is shutting down; retry against another instance")
            queued = self._queued_rows[signal]
            if queued + len(pending.batch) > self._limits.queue_max_rows and queued > 0:
                raise Overloaded(
                    f"{queued} {signal.value} rows are waiting to be written "
                    f"(queue_max_rows={self._limits.queue_max_rows}); retry shortly"
                )
            self._queues[signal].append(pending)
            self._queued_rows[signal] = queued + len(pending.batch)
            metrics.QUEUE_ROWS.labels(signal.value).set(self._queued_rows[signal])
            self._cond.notify_all()

    @property
    def degraded(self) -> bool:
        """True while ClickHouse inserts fail and batches go to the spool."""
        return self._degraded.is_set()

    # -- writer ------------------------------------------------------------------------------

    def _take(self, signal: Signal) -> list[_Pending] | None:
        """Block until a batch is due; None when stopping with nothing left."""
        limits = self._limits
        with self._cond:
            while True:
                queue = self._queues[signal]
                if queue:
                    age = time.monotonic() - queue[0].arrived
                    rows = self._queued_rows[signal]
                    if (
                        self._stopping
                        or rows >= limits.batch_max_rows
                        or age >= limits.batch_max_wait_s
                    ):
                        break
                    self._cond.wait(limits.batch_max_wait_s - age)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
            taken: list[_Pending] = []
            rows = 0
            while queue and (not taken or rows + len(queue[0].batch) <= limits.batch_max_rows):
                item = queue.popleft()
                taken.append(item)
                rows += len(item.batch)
            self._queued_rows[signal] -= rows
            metrics.QUEUE_ROWS.labels(signal.value).set(self._queued_rows[signal])
            return taken

    def _write_loop(self, signal: Signal) -> None:
        while (taken := self._take(signal)) is not None:
            self._flush(signal, taken)

    def _flush(self, signal: Signal, taken: list[_Pending]) -> None:
        batch = RowBatch(signal)
        for item in taken:
            batch.rows.extend(item.batch.rows)
        token = uuid.uuid4().hex
        error: BaseException | None = None
        if not self._degraded.is_set():
            started = time.perf_counter()
            try:
                self._sink.insert(batch, dedup_token=token)
            except Exception as exc:
                error = exc
                self._degraded.set()
                log.warning(
                    "insert of %d %s rows failed, spooling: %s", len(batch), signal.value, exc
                )
            else:
                metrics.FLUSH_SECONDS.labels(signal.value).observe(time.perf_counter() - started)
                metrics.BATCHES.labels(signal.value, "inserted").inc()
                metrics.ITEMS.labels(signal.value, "accepted").inc(len(batch))
                _resolve(taken, None)
                return
        try:
            self._spool.write(signal, [item.payload for item in taken], token=token)
        except Exception as exc:
            metrics.BATCHES.labels(signal.value, "failed").inc()
            log.error("batch of %d %s rows could not be spooled: %s", len(batch), signal.value, exc)
            cause = f"insert failed ({error}); " if error else ""
            _resolve(taken, Unavailable(f"{cause}spool unavailable ({exc}); retry later"))
            return
        metrics.BATCHES.labels(signal.value, "spooled").inc()
        metrics.ITEMS.labels(signal.value, "accepted").inc(len(batch))
        _resolve(taken, None)

    # -- spool replay ------------------------------------------------------------------------

    def replay_spool(self) -> int:
        """Insert spooled batches, oldest first; stops at the first failure. Returns how many."""
        done = 0
        for path in self._spool.pending():
            try:
                entry = self._spool.read(path)
            except SpoolCorrupt:
                continue
            except FileNotFoundError:
                continue
            if not self._replay_one(entry):
                return done
            done += 1
        self._degraded.clear()
        return done

    def _replay_one(self, entry: SpoolEntry) -> bool:
        try:
            batch = self._redecode(entry.signal, entry.payloads)
            self._sink.insert(batch, dedup_token=entry.token)
        except Exception as exc:
            self._degraded.set()
            log.info("spool replay of %s still failing: %s", entry.path.name, exc)
            return False
        self._spool.remove(entry.path)
        metrics.REPLAYED.labels(entry.signal.value).inc()
        log.info("replayed %s (%d %s rows)", entry.path.name, len(batch), entry.signal.value)
        return True

    def _replay_loop(self) -> None:
        while not self._stop_replay.wait(self._limits.replay_interval_s):
            if self._degraded.is_set() or self._spool.size_bytes:
                self.replay_spool()


def _resolve(items: list[_Pending], error: BaseException | None) -> None:
    for item in items:
        if error is None:
            item.future.set_result(None)
        else:
            item.future.set_exception(error)
