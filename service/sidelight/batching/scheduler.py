"""Cross-request batching: requests wait here, grouped, until a device executor takes a batch.

A group is (model, version, task, parameters, input shape): only requests that can share one
model call share a batch. Executors take the group whose oldest request has waited longest and
gather its requests up to `max_batch_size` instances (a request is never split), waiting up to
`max_wait_ms` for more while the batch is not full. Meanwhile:

- admission is bounded: past `max_queue_instances` waiting, `submit` raises Overloaded;
- a request whose deadline has passed is failed at take time, before it costs device time;
- a cancelled request leaves the queue at once and frees its slot;
- a batch already running stops before its next model call once every one of its callers has
  cancelled or passed its deadline (`Pending.unwanted`, checked by the executor): a client that
  gives up on a minute-long Integrated Gradients batch does not keep the device for that minute.

Requests come from the asyncio loop of the gRPC server; executors are threads. Results go back
to the loop with `call_soon_threadsafe`. A device may run several executors (lanes,
sidelight.batching.lanes): the first takes any group; the others only groups marked heavy
(`mark_heavy`), whose model calls are long enough to share the cores well.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from sidelight.errors import DeadlineExceeded, Overloaded, Unavailable
from sidelight.methods.chunking import Measure
from sidelight.models.model import Model
from sidelight.settings import BatchingSettings

MAX_HEAVY_GROUPS = 1024
# (replica on the executor's device, inputs, targets, seeds, max rows per call, a wrapper
# that times each model call) -> result
BatchRunner = Callable[[Model, torch.Tensor, torch.Tensor, torch.Tensor, int, Measure], Any]
# (batch result, start, stop) -> this request's share of it
Splitter = Callable[[Any, int, int], Any]


@dataclass(frozen=True)
class Group:
    """Everything requests must share to ride in one batch."""

    key: Hashable
    model: str
    version: str
    task: str  # "predict" or a method name
    run: BatchRunner = field(compare=False)
    split: Splitter = field(compare=False)
    rows_per_instance: int = field(default=1, compare=False)


@dataclass(eq=False)
class Pending:
    group: Group
    inputs: torch.Tensor  # n x input shape, on the CPU
    targets: torch.Tensor  # n int64, -1 = predicted class
    seed: int
    deadline: float | None  # time.monotonic() after which nobody waits for the answer
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    done: bool = False  # taken or withdrawn: no longer in a queue
    left: bool = False  # the caller stopped waiting (set on the event loop's thread)

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    def unwanted(self, now: float) -> bool:
        """Nobody will read the answer: the caller cancelled, or its deadline (`now` on
        time.monotonic's clock) has passed. Read from the executor's thread; a stale read
        only costs one more model call."""
        return self.left or (self.deadline is not None and self.deadline <= now)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the waiting coroutine (from any thread)."""
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass
class TakenBatch:
    group: Group
    requests: list[Pending]
    waited: list[float]  # seconds each request spent queued

    @property
    def instances(self) -> int:
        return sum(r.size for r in self.requests)


class Scheduler:
    def __init__(
        self,
        settings: BatchingSettings,
        on_depth: Callable[[str, int], None] = lambda model, delta: None,
        on_drop: Callable[[str, str], None] = lambda model, reason: None,
    ) -> None:
        self._settings = settings
        self._max_wait = settings.max_wait_ms / 1000.0
        self._queues: OrderedDict[Group, deque[Pending]] = OrderedDict()
        self._queued = 0
        self._in_flight = 0  # queued or in a running batch, until answered
        self._idle_since: float | None = time.monotonic()  # None while anything is in flight
        self._closed = False
        # Keys of the groups extra lanes may take, most recent last; bounded like the groups
        # themselves (their keys come from what clients send).
        self._heavy: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._on_depth = on_depth
        self._on_drop = on_drop

    @property
    def queued_instances(self) -> int:
        return self._queued

    @property
    def in_flight_instances(self) -> int:
        """Instances accepted and not yet answered: queued, or in a batch being computed."""
        return self._in_flight

    def idle_for(self) -> float:
        """Seconds since the last answer left nothing in flight; 0 while something is. What
        background work (the faithfulness sampler) waits on, reading it a few times a second."""
        since = self._idle_since
        return 0.0 if since is None else time.monotonic() - since

    async def submit(
        self,
        group: Group,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seed: int,
        deadline: float | None,
    ) -> Any:
        """Queue one request and wait for its share of a batch result."""
        loop = asyncio.get_running_loop()
        pending = Pending(group, inputs, targets, seed, deadline, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise Unavailable("the server is shutting down")
            if self._queued + pending.size > self._settings.max_queue_instances:
                raise Overloaded(
                    f"{self._queued} instances are waiting (limit "
                    f"{self._settings.max_queue_instances}); retry later"
                )
            self._queues.setdefault(group, deque()).append(pending)
            self._queued += pending.size
            # Every waiting executor: the one `notify` would pick may be a lane that does not
            # take this group.
            self._wake.notify_all()
        self._on_depth(group.model, pending.size)
        # Only ever changed on the event loop's thread.
        self._in_flight += pending.size
        self._idle_since = None
        try:
            return await pending.future
        except asyncio.CancelledError:
            pending.left = True
            self._withdraw(pending, "cancelled")
            raise
        finally:
            self._in_flight -= pending.size
            if self._in_flight == 0:
                self._idle_since = time.monotonic()

    def _withdraw(self, pending: Pending, reason: str) -> None:
        with self._lock:
            queue = self._queues.get(pending.group)
            if pending.done or queue is None:
                return
            try:
                queue.remove(pending)
            except ValueError:
                return
            pending.done = True
            self._queued -= pending.size
            if not queue:
                del self._queues[pending.group]
        self._on_depth(pending.group.model, -pending.size)
        self._on_drop(pending.group.model, reason)

    def mark_heavy(self, group: Group, heavy: bool) -> None:
        """Whether executors that take only heavy groups may take `group` (from now on)."""
        with self._lock:
            if heavy:
                if group.key not in self._heavy:
                    self._wake.notify_all()  # a lane waiting for heavy work may take it now
                self._heavy[group.key] = None
                self._heavy.move_to_end(group.key)
                if len(self._heavy) > MAX_HEAVY_GROUPS:
                    self._heavy.popitem(last=False)
            else:
                self._heavy.pop(group.key, None)

    def take(self, timeout: float | None = None, *, heavy_only: bool = False) -> TakenBatch | None:
        """Block until a batch is ready (or `timeout` passes, or the scheduler closes).
        `heavy_only`: only from groups marked heavy."""
        give_up = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._queues:
                    batch = self._gather_locked(heavy_only)
                    if batch is not None:
                        break
                    if self._closed and not self._eligible_locked(heavy_only):
                        return None  # what is left is another executor's to drain
                elif self._closed:
                    return None
                wait = self._next_wakeup_locked(heavy_only)
                now = time.monotonic()
                if give_up is not None:
                    if now >= give_up:
                        return None
                    wait = give_up - now if wait is None else min(wait, give_up - now)
                self._wake.wait(wait)
        self._on_depth(batch.group.model, -batch.instances)
        return batch

    def _eligible_locked(self, heavy_only: bool) -> list[tuple[Group, deque[Pending]]]:
        return [
            (group, queue)
            for group, queue in self._queues.items()
            if not heavy_only or group.key in self._heavy
        ]

    def _next_wakeup_locked(self, heavy_only: bool) -> float | None:
        eligible = self._eligible_locked(heavy_only)
        if not eligible:
            return None  # until a submit or close wakes us
        oldest = min(queue[0].enqueued for _, queue in eligible)
        return max(0.0, oldest + self._max_wait - time.monotonic())

    def _gather_locked(self, heavy_only: bool = False) -> TakenBatch | None:
        now = time.monotonic()
        self._expire_locked(now)
        eligible = self._eligible_locked(heavy_only)
        if not eligible:
            return None
        group, queue = min(eligible, key=lambda item: item[1][0].enqueued)
        limit = self._settings.max_batch_size
        available = sum(p.size for p in queue)
        if available < limit and now < queue[0].enqueued + self._max_wait and not self._closed:
            return None  # not full, and the oldest may still wait for company
        taken: list[Pending] = []
        count = 0
        while queue and (not taken or count + queue[0].size <= limit):
            pending = queue.popleft()
            pending.done = True
            taken.append(pending)
            count += pending.size
        if not queue:
            del self._queues[group]
        self._queued -= count
        return TakenBatch(group, taken, [now - p.enqueued for p in taken])

    def _expire_locked(self, now: float) -> None:
        for group in list(self._queues):
            queue = self._queues[group]
            late = [p for p in queue if p.deadline is not None and p.deadline <= now]
            for pending in late:
                queue.remove(pending)
                pending.done = True
                self._queued -= pending.size
                self._on_depth(group.model, -pending.size)
                self._on_drop(group.model, "deadline")
                pending.resolve(error=DeadlineExceeded("the deadline passed while queued"))
            if not queue:
                del self._queues[group]

    def close(self) -> None:
        """Refuse new requests; executors drain what is queued, then `take` returns None."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
