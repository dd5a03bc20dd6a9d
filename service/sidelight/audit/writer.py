"""The audit writer: group commit, so that a durable record does not cost a transaction each.

Every record must be on disk before the caller answers, and a durable commit costs a disk
sync (milliseconds) while holding the chain's head lock. One transaction per record would cap
the whole service at a few hundred decisions a second and queue every request behind that
lock. So callers only enqueue (`submit`, or `await write` from an event loop); one background
thread takes everything pending, up to `max_batch`, appends it in one transaction and then
resolves each caller's future with its seq, or fails them all with `AuditUnavailable`. Under
load batches grow by themselves; alone, a record waits for nothing but its own commit.

An event loop's records are handed over together, once per turn of the loop: the requests of
one computed batch resume in the same turn, so the writer thread is woken once for them (each
wake-up takes the GIL from the loop's thread) and finds them all in one item.

Once a batch's callers are answered, the writer lets the store do what its commits leave for
later (on SQLite, copying the write-ahead log back into the database: `AuditStore.fold_wal`).

A record_id that conflicts with a stored record fails only its own caller: the batch is then
retried one record at a time. The writer also signs a checkpoint of the head every
`checkpoint_every` records or `checkpoint_interval_s` seconds, whichever comes first, and once
more when closed, so that the records left unsigned at any moment are few and recent. A
backlog beyond `max_pending` (a store slower than the traffic) is refused with `Overloaded`
rather than held in memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sidelight.audit.record import AuditRecord
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore
from sidelight.errors import (
    AuditRecordConflict,
    AuditUnavailable,
    Overloaded,
    SidelightError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pending:
    record: AuditRecord
    future: Future[int]
    # An awaiting coroutine's future and its loop (`write`); told once the batch is settled.
    waiter: asyncio.Future[int] | None = None
    loop: asyncio.AbstractEventLoop | None = None


class AuditWriter:
    def __init__(
        self,
        store: AuditStore,
        signer: Signer | None = None,
        *,
        max_batch: int = 256,
        max_pending: int = 100_000,
        checkpoint_every: int = 10_000,
        checkpoint_interval_s: float = 60.0,
    ) -> None:
        if max_batch < 1 or max_pending < 1 or checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ValueError("batch, backlog and checkpoint sizes and interval must be positive")
        self._store = store
        self._signer = signer
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval_s = checkpoint_interval_s
        # Records handed over together; None, the last item: write what came before, then stop.
        self._queue: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit against close; guards the counts below
        self._closed = False
        self._waiting = 0  # records queued, not yet taken by the writer thread
        self._carried: list[_Pending] = []  # taken beyond max_batch: the next batch's start
        # Per event loop, the records written during its current turn (handed over at its end).
        self._turns: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        self._unsigned = 0  # records appended since the last checkpoint
        self._last_checkpoint = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # -- the callers' side -----------------------------------------------------------------

    def submit(self, record: AuditRecord) -> Future[int]:
        """Queue `record`; the future resolves to its seq once it is durable."""
        pending = _Pending(record, Future())
        with self._lock:
            self._admit()
            self._queue.put([pending])
        return pending.future

    async def write(self, record: AuditRecord) -> int:
        """Write `record` and return its seq, without blocking the event loop. The records
        written in one turn of the loop go to the writer together when the turn ends, and the
        awaiting coroutines of one batch are woken by one call into their loop."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        pending = _Pending(record, Future(), waiter, loop)
        with self._lock:
            self._admit()
            turn = self._turns.get(loop)
            if turn is None:
                turn = self._turns[loop] = []
                loop.call_soon(self._hand_over, loop)
            turn.append(pending)
        return await waiter

    def _admit(self) -> None:
        """Under the lock: count one more record in, or refuse it."""
        if self._closed:
            raise AuditUnavailable("the audit writer is closed")
        if self._waiting >= self._max_pending:
            raise Overloaded(f"{self._max_pending} audit records are waiting to be written")
        self._waiting += 1

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, at the end of a turn: its records to the writer thread, in one item
        (or, if the writer closed meanwhile, their waiters told so)."""
        with self._lock:
            turn = self._turns.pop(loop)
            if not self._closed:
                self._queue.put(turn)
                return
            self._waiting -= len(turn)
        closed = AuditUnavailable("the audit writer is closed")
        for pending in turn:
            pending.future.set_exception(closed)
        _settle(turn)

    def close(self, timeout: float | None = None) -> None:
        """Write everything submitted so far, sign a last checkpoint, and stop."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        self._thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch, closing = self._next_batch()
            if batch:
                self._commit(batch)
                self._wake(batch)
                self._store.fold_wal()  # with the callers answered
            self._checkpoint_if_due(closing)
            if closing:
                return

    def _next_batch(self) -> tuple[list[_Pending], bool]:
        """Wait for the first pending records (or for a checkpoint to fall due), then take what
        else is already waiting, up to max_batch."""
        batch, self._carried = self._carried, []
        closing = False
        try:
            if not batch:
                item = self._queue.get(timeout=self._until_checkpoint())
                if item is None:
                    return batch, True
                batch.extend(item)
            while len(batch) < self._max_batch:
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.extend(item)
        except queue.Empty:
            pass
        if len(batch) > self._max_batch:
            batch, self._carried = batch[: self._max_batch], batch[self._max_batch :]
            if closing:  # write the rest before stopping
                self._queue.put(None)
                closing = False
        with self._lock:
            self._waiting -= len(batch)
        return batch, closing

    def _commit(self, batch: list[_Pending]) -> None:
        # A caller that cancelled still gets its record written: the decision happened.
        waiting = [pending.future.set_running_or_notify_cancel() for pending in batch]
        try:
            stored = self._store.append([pending.record for pending in batch])
        except AuditRecordConflict as exc:
            if len(batch) == 1:
                self._fail(batch, waiting, exc)
                return
            for pending, running in zip(batch, waiting, strict=True):  # only the offender fails
                self._commit_one(pending, running)
            return
        except SidelightError as exc:
            log.warning("audit batch of %d not written: %s", len(batch), exc)
            self._fail(batch, waiting, exc)
            return
        except Exception as exc:  # a bug: fail the callers, keep the writer alive
            log.exception("audit batch of %d not written", len(batch))
            self._fail(batch, waiting, exc)
            return
        self._unsigned += len(batch)
        for pending, running, entry in zip(batch, waiting, stored, strict=True):
            if running:
                pending.future.set_result(entry.seq)

    def _commit_one(self, pending: _Pending, running: bool) -> None:
        try:
            [entry] = self._store.append([pending.record])
        except Exception as exc:
            if running:
                pending.future.set_exception(exc)
            return
        self._unsigned += 1
        if running:
            pending.future.set_result(entry.seq)

    @staticmethod
    def _wake(batch: list[_Pending]) -> None:
        """Hand each awaiting coroutine its outcome: one call per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for pending in batch:
            if pending.loop is not None:
                by_loop.setdefault(pending.loop, []).append(pending)
        for loop, waiting in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, waiting)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                continue

    @staticmethod
    def _fail(batch: list[_Pending], waiting: list[bool], exc: BaseException) -> None:
        for pending, running in zip(batch, waiting, strict=True):
            if running:
                pending.future.set_exception(exc)

    def _until_checkpoint(self) -> float | None:
        if self._signer is None or self._unsigned == 0:
            return None
        due = self._last_checkpoint + self._checkpoint_interval_s
        return max(0.0, due - time.monotonic())

    def _checkpoint_if_due(self, closing: bool) -> None:
        if self._signer is None or self._unsigned == 0:
            return
        late = time.monotonic() - self._last_checkpoint >= self._checkpoint_interval_s
        if not (closing or late or self._unsigned >= self._checkpoint_every):
            return
        try:
            with self._store.transaction() as transaction:
                signed = self._signer.checkpoint(transaction)
        except SidelightError as exc:  # retried when next due; the records themselves are safe
            log.warning("audit checkpoint not written: %s", exc)
            self._last_checkpoint = time.monotonic()
            return
        log.debug("audit checkpoint at seq %d", signed.checkpoint.seq)
        self._unsigned = 0
        self._last_checkpoint = time.monotonic()


def _settle(waiting: list[_Pending]) -> None:
    """On the waiters' loop: copy each record's outcome to its waiter (unless cancelled)."""
    for pending in waiting:
        waiter = pending.waiter
        if waiter is None or waiter.done():
            continue
        if not pending.future.done():  # never left unsettled by _commit; never block the loop
            waiter.set_exception(AuditUnavailable("the audit writer did not settle the record"))
            continue
        error = pending.future.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(pending.future.result())
