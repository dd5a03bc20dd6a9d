"""Executors: threads that take batches from the scheduler and run them on a device.

A device runs one or more lanes (`sidelight.batching.lanes`), each an executor with its own copy
of the models and its own share of the device's threads.

The batch crosses to the device once (one concatenation, one transfer), runs in chunks sized by
what this executor measured (sidelight.batching.sizing), and comes back once; each request then
receives its slice. An exception in a batch fails that batch's requests, never the thread. A
batch whose callers have all gone (cancelled, or past their deadlines) stops before its next
model call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import torch

from sidelight.batching.lanes import LaneOverlap, is_heavy
from sidelight.batching.scheduler import Group, Pending, Scheduler, TakenBatch
from sidelight.batching.sizing import START_ROWS, ChunkSizer
from sidelight.batching.timing import CallTimer
from sidelight.errors import DeadlineExceeded
from sidelight.methods.chunking import Measure
from sidelight.models.model import Model
from sidelight.settings import BatchingSettings

log = logging.getLogger(__name__)

MAX_SIZERS = 1024
T = TypeVar("T")


@dataclass(frozen=True)
class BatchReport:
    """What one batch did, for metrics."""

    group: Group
    device: str
    instances: int
    seconds: float
    chunk_rows: int
    queue_waits: list[float]
    failed: bool
    abandoned: bool = False  # stopped early: every caller had cancelled or passed its deadline


class _Abandoned(Exception):
    """Raised inside a batch, before a model call, when nobody waits for its result."""


class DeviceExecutor:
    def __init__(
        self,
        device: torch.device,
        scheduler: Scheduler,
        replica: Callable[[str, str, torch.device], Model],
        settings: BatchingSettings,
        on_batch: Callable[[BatchReport], None] = lambda report: None,
        *,
        threads: int | None = None,
        alone_threads: int | None = None,
        overlap: LaneOverlap | None = None,
        lane: int = 0,
    ) -> None:
        self.device = device
        self.lane = lane
        self._threads = threads  # intra-op threads of this executor's thread; None: torch's
        self._alone_threads = alone_threads  # while no other lane runs (Lane)
        self._overlap = overlap  # shared by the device's lanes; None: one lane
        self._threads_now = threads  # the executor thread's intra-op threads, as last set
        self._scheduler = scheduler
        self._replica = replica
        self._settings = settings
        self._on_batch = on_batch
        # One sizer per group key, bounded like the groups themselves (their keys come from
        # what clients send); an evicted group learns its size again.
        self._sizers: OrderedDict[Hashable, ChunkSizer] = OrderedDict()
        self.batches_run = 0  # batches taken, whatever their outcome
        self._thread = threading.Thread(
            target=self._loop, name=f"executor-{device}-{lane}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def chunk_rows(self, key: Hashable) -> int | None:
        sizer = self._sizers.get(key)
        return None if sizer is None else sizer.current

    def _loop(self) -> None:
        heavy_only = self.lane > 0  # the first lane takes every group; the others, heavy ones
        if self._threads is not None:
            # Per thread: torch's intra-op thread count is OpenMP's, which each thread keeps.
            # But torch sets a thread's count on its first parallel call, to the count any
            # thread set last: that first call comes now, so that it cannot undo this one.
            torch.get_num_threads()
            torch.set_num_threads(self._threads)
        while (batch := self._scheduler.take(heavy_only=heavy_only)) is not None:
            self._run(batch)

    def _sizer(self, group: Group) -> ChunkSizer:
        sizer = self._sizers.get(group.key)
        if sizer is not None:
            self._sizers.move_to_end(group.key)
        else:
            sizer = ChunkSizer(
                self._settings.max_rows_per_call,
                adaptive=self._settings.adaptive_chunks,
                start=max(START_ROWS, group.rows_per_instance),
            )
            self._sizers[group.key] = sizer
            if len(self._sizers) > MAX_SIZERS:
                self._sizers.popitem(last=False)
        return sizer

    def _run(self, batch: TakenBatch) -> None:
        self.batches_run += 1
        if self._overlap is None:
            self._run_batch(batch)
            return
        alone = self._overlap.begin()
        try:
            threads = self._alone_threads if alone else self._threads
            # Only on a change: torch.set_num_threads also empties oneDNN's computation cache
            # (and stores the count process-wide), so under load, where the lanes keep their
            # shares, no batch pays for it.
            if threads is not None and threads != self._threads_now:
                torch.set_num_threads(threads)
                self._threads_now = threads
            self._run_batch(batch)
        finally:
            self._overlap.end()

    def _run_batch(self, batch: TakenBatch) -> None:
        group, requests = batch.group, batch.requests
        sizer = self._sizer(group)
        chunk = sizer.current
        started = time.perf_counter()
        failed = abandoned = False
        timer = CallTimer(self.device)
        try:
            model = self._replica(group.model, group.version, self.device)
            inputs = _cat([r.inputs for r in requests]).to(self.device, non_blocking=True)
            targets = _cat([r.targets for r in requests]).to(self.device, non_blocking=True)
            seeds = torch.cat([torch.full((r.size,), r.seed, dtype=torch.int64) for r in requests])
            result = group.run(
                model, inputs, targets, seeds, chunk, _while_wanted(requests, timer.measure)
            )
        except _Abandoned:
            log.info(  # not the calls' timings: on CUDA they are read only after a sync
                "batch of %s/%s abandoned after %.1f s: its %d caller(s) left",
                group.model,
                group.task,
                time.perf_counter() - started,
                len(requests),
            )
            abandoned = True
            for request in requests:  # nobody reads these; the futures are settled all the same
                request.resolve(error=DeadlineExceeded("every caller of the batch had left"))
        except Exception as exc:  # the batch fails, the executor goes on
            log.exception("batch of %s/%s failed", group.model, group.task)
            failed = True
            for request in requests:
                request.resolve(error=exc)
        else:
            start = 0
            for request in requests:
                request.resolve(group.split(result, start, start + request.size))
                start += request.size
        seconds = time.perf_counter() - started
        if not (failed or abandoned):  # back on the host: its calls' times can be read
            calls = timer.timings()
            if calls:
                heavy = is_heavy(
                    calls, self._settings.extra_lane_min_call_ms / 1000.0, group.rows_per_instance
                )
                self._scheduler.mark_heavy(group, heavy)
            verdict = sizer.record_batch(chunk, calls)
            if verdict is not None:
                log.info(
                    "chunk sizing %s/%s %s: %d rows %s, %d rows %s per row: keeps %d%s",
                    group.model,
                    group.version,
                    group.task,
                    verdict.smaller,
                    _micros(verdict.smaller_per_row),
                    verdict.bigger,
                    _micros(verdict.bigger_per_row),
                    verdict.kept,
                    " (settled)" if sizer.settled else "",
                )
        self._on_batch(
            BatchReport(
                group,
                str(self.device),
                batch.instances,
                seconds,
                chunk,
                batch.waited,
                failed,
                abandoned,
            )
        )


def _while_wanted(requests: list[Pending], measure: Measure) -> Measure:
    """`measure`, which first checks that someone still waits for the batch. A host-side check
    of flags and the clock: no device synchronization inside the batch."""

    def checked(rows: int, call: Callable[[], T]) -> T:
        now = time.monotonic()
        if all(request.unwanted(now) for request in requests):
            raise _Abandoned
        return measure(rows, call)

    return checked


def _micros(seconds: float | None) -> str:
    return "never filled" if seconds is None else f"{seconds * 1e6:.0f} µs"


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
