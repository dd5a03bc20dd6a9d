"""The cross-request scheduler, driven directly: requests submitted on an asyncio loop, batches
taken as an executor would take them.

`take(timeout=0)` answers "is a batch ready now?" without blocking. Where the rule under test is
about time (max_wait, deadlines), the scheduler's clock is replaced by one the test advances, so
nothing depends on how fast the machine is; threads are only used to check that a blocked
`take` is woken, and they are joined with a generous bound that only matters when the code hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import torch
from sidelight.batching import scheduler as scheduler_module
from sidelight.batching.scheduler import Group, Scheduler, TakenBatch
from sidelight.errors import DeadlineExceeded, Overloaded, Unavailable
from sidelight.settings import BatchingSettings

HOUR_MS = 3_600_000.0
SHAPE = (1, 8, 8)


def never_run(*args: Any) -> Any:
    raise AssertionError("the scheduler never runs a batch itself")


def never_split(*args: Any) -> Any:
    raise AssertionError("the scheduler never splits a result itself")


def make_group(
    model: str = "digits",
    task: str = "saliency",
    params: str = "{}",
    shape: tuple[int, ...] = SHAPE,
    run: Callable[..., Any] = never_run,
) -> Group:
    """A group keyed as the data plane keys them: (model, version, task, params, shape)."""
    return Group((model, "1", task, params, shape), model, "1", task, run, never_split)


class Events:
    """What the scheduler reports through its callbacks."""

    def __init__(self) -> None:
        self.depth: Counter[str] = Counter()
        self.drops: list[tuple[str, str]] = []

    def on_depth(self, model: str, delta: int) -> None:
        self.depth[model] += delta

    def on_drop(self, model: str, reason: str) -> None:
        self.drops.append((model, reason))


class FakeClock:
    """The scheduler's `time`: real monotonic time plus an offset the test advances.

    Requests are stamped `enqueued` with the real clock (a dataclass default), so the fake one
    must never run behind it; an offset only ever moves it forward.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(scheduler_module, "time", fake)
    return fake


def make_scheduler(events: Events | None = None, **settings: Any) -> Scheduler:
    events = events or Events()
    return Scheduler(BatchingSettings(**settings), events.on_depth, events.on_drop)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def submit(
    scheduler: Scheduler,
    group: Group,
    ident: int,
    size: int = 1,
    deadline: float | None = None,
) -> asyncio.Task[Any]:
    """Submit a request tagged `ident` (carried as its seed) and let it reach the queue."""
    inputs = torch.zeros((size, *group.key[-1]))
    targets = torch.full((size,), -1, dtype=torch.int64)
    task = asyncio.create_task(scheduler.submit(group, inputs, targets, ident, deadline))
    await asyncio.sleep(0)  # the task runs up to its first await: queued, or refused
    return task


def idents(batch: TakenBatch | None) -> list[int]:
    assert batch is not None, "expected a batch"
    return [request.seed for request in batch.requests]


def answer(batch: TakenBatch | None) -> None:
    """What an executor does: every request gets its own result."""
    assert batch is not None
    for request in batch.requests:
        request.resolve(f"result {request.seed}")


def tick() -> None:
    """Let the monotonic clock move on, so that the next request is strictly younger."""
    start = time.monotonic()
    while time.monotonic() == start:
        pass


@pytest.fixture
def in_thread() -> Iterator[Callable[[Callable[[], Any]], tuple[threading.Thread, list[Any]]]]:
    started: list[threading.Thread] = []

    def start(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
        thread.start()
        started.append(thread)
        return thread, result

    yield start
    for thread in started:
        thread.join(60)


def test_requests_of_one_group_are_gathered_up_to_max_batch_size() -> None:
    async def scenario() -> None:
        events = Events()
        scheduler = make_scheduler(events, max_batch_size=4, max_wait_ms=HOUR_MS)
        group = make_group()
        tasks = [await submit(scheduler, group, i) for i in range(6)]
        assert scheduler.queued_instances == 6
        assert events.depth["digits"] == 6

        batch = scheduler.take(timeout=0)
        assert idents(batch) == [0, 1, 2, 3]  # first come, first in
        assert batch is not None and batch.group == group and batch.instances == 4
        assert len(batch.waited) == 4 and all(w >= 0 for w in batch.waited)
        # Two left: not a full batch, and the oldest may still wait for company.
        assert scheduler.take(timeout=0) is None
        assert scheduler.queued_instances == 2
        assert events.depth["digits"] == 2

        answer(batch)
        assert await asyncio.gather(*tasks[:4]) == [f"result {i}" for i in range(4)]
        assert not any(t.done() for t in tasks[4:])
        for t in tasks[4:]:
            t.cancel()
        await asyncio.gather(*tasks[4:], return_exceptions=True)
        assert scheduler.queued_instances == 0

    run(scenario)


def test_a_request_is_never_split_and_a_large_one_runs_alone() -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=4, max_wait_ms=HOUR_MS)
        group = make_group()
        tasks = [await submit(scheduler, group, i, size) for i, size in enumerate([3, 3, 6])]
        taken = [scheduler.take(timeout=0) for _ in range(3)]
        assert [idents(b) for b in taken] == [[0], [1], [2]]
        assert [b.instances for b in taken if b is not None] == [3, 3, 6]
        assert scheduler.take(timeout=0) is None
        for batch in taken:
            answer(batch)
        assert await asyncio.gather(*tasks) == ["result 0", "result 1", "result 2"]

    run(scenario)


def test_different_groups_are_never_mixed(clock: FakeClock) -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=8, max_wait_ms=1000)
        groups = [
            make_group(params='{"n_steps": 32}'),
            make_group(params='{"n_steps": 64}'),  # other parameters
            make_group(shape=(1, 8, 9)),  # other input shape
            make_group(task="grad_cam"),  # other method
            make_group(model="breast_cancer"),  # other model
        ]
        # The callables do not make a group: same key, different `run`, same group.
        twin = make_group(params='{"n_steps": 32}', run=lambda *a: None)
        assert twin == groups[0]

        tasks = []
        for round_ in range(2):
            for g, group in enumerate(groups):
                tasks.append(await submit(scheduler, group, 10 * g + round_))
        tasks.append(await submit(scheduler, twin, 2))
        assert scheduler.take(timeout=0) is None  # no group is full, nobody waited long enough

        clock.advance(1.0)
        batches = [scheduler.take(timeout=0) for _ in groups]
        assert scheduler.take(timeout=0) is None
        assert [idents(b) for b in batches] == [[0, 1, 2], [10, 11], [20, 21], [30, 31], [40, 41]]
        for batch, group in zip(batches, groups, strict=True):
            assert batch is not None and batch.group == group
            assert all(r.group == group for r in batch.requests)
            answer(batch)
        await asyncio.gather(*tasks)

    run(scenario)


def test_a_partial_batch_is_released_at_max_wait(clock: FakeClock) -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=8, max_wait_ms=60_000)
        group = make_group()
        tasks = [await submit(scheduler, group, i) for i in range(2)]
        assert scheduler.take(timeout=0) is None
        clock.advance(30.0)
        assert scheduler.take(timeout=0) is None  # half of max_wait: still waiting for company
        clock.advance(30.0)
        batch = scheduler.take(timeout=0)
        assert idents(batch) == [0, 1]
        assert batch is not None and all(w >= 60.0 for w in batch.waited)
        answer(batch)
        await asyncio.gather(*tasks)

    run(scenario)


def test_a_blocked_take_wakes_by_itself_when_max_wait_passes() -> None:
    """Real time: nothing else happens after the submit, yet the waiting executor gets the
    partial batch (it must have computed its own wake-up)."""

    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=8, max_wait_ms=20)
        task = await submit(scheduler, make_group(), 7)
        batch = await asyncio.to_thread(scheduler.take, 120)
        assert idents(batch) == [7]
        assert batch is not None and batch.waited[0] >= 0.02
        answer(batch)
        assert await task == "result 7"

    run(scenario)


def test_a_submit_wakes_a_blocked_take(
    in_thread: Callable[[Callable[[], Any]], tuple[threading.Thread, list[Any]]],
) -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=1, max_wait_ms=HOUR_MS)
        thread, result = in_thread(lambda: scheduler.take(timeout=None))
        task = await submit(scheduler, make_group(), 3)
        await asyncio.to_thread(thread.join, 60)
        assert not thread.is_alive(), "take() was not woken by a full batch"
        assert idents(result[0]) == [3]
        answer(result[0])
        assert await task == "result 3"

    run(scenario)


def test_admission_past_max_queue_instances_is_overloaded() -> None:
    async def scenario() -> None:
        events = Events()
        scheduler = make_scheduler(
            events, max_batch_size=2, max_queue_instances=4, max_wait_ms=HOUR_MS
        )
        group = make_group()
        first = [await submit(scheduler, group, i, size=2) for i in range(2)]
        refused = await submit(scheduler, group, 9)
        with pytest.raises(Overloaded, match="limit 4"):
            await refused
        assert scheduler.queued_instances == 4
        assert events.depth["digits"] == 4  # the refused request was never counted

        batch = scheduler.take(timeout=0)  # an executor takes one batch: room for two
        assert idents(batch) == [0]
        admitted = await submit(scheduler, group, 2, size=2)
        assert not admitted.done()
        assert scheduler.queued_instances == 4

        one_too_many = await submit(scheduler, group, 3)
        with pytest.raises(Overloaded):
            await one_too_many

        answer(batch)
        for _ in range(2):
            answer(scheduler.take(timeout=0))
        assert await asyncio.gather(first[0], first[1], admitted) == [
            "result 0",
            "result 1",
            "result 2",
        ]

    run(scenario)


def test_a_request_larger_than_the_queue_is_refused() -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=2, max_queue_instances=4)
        task = await submit(scheduler, make_group(), 0, size=5)
        with pytest.raises(Overloaded):
            await task
        assert scheduler.queued_instances == 0

    run(scenario)


def test_an_expired_request_is_failed_at_take_time_and_never_taken(clock: FakeClock) -> None:
    async def scenario() -> None:
        events = Events()
        scheduler = make_scheduler(events, max_batch_size=2, max_wait_ms=HOUR_MS)
        group = make_group()
        now = clock.monotonic()
        late = await submit(scheduler, group, 0, deadline=now + 10)
        on_time = await submit(scheduler, group, 1, deadline=now + 1000)
        patient = await submit(scheduler, group, 2)
        clock.advance(11)
        # Nothing checks deadlines between takes: the expired request is still pending.
        assert not late.done()

        batch = scheduler.take(timeout=0)
        assert idents(batch) == [1, 2]  # the expired request's place went to the next one
        with pytest.raises(DeadlineExceeded):
            await late
        assert events.drops == [("digits", "deadline")]
        assert scheduler.queued_instances == 0
        assert events.depth["digits"] == 0

        answer(batch)
        assert await asyncio.gather(on_time, patient) == ["result 1", "result 2"]

    run(scenario)


def test_expiry_does_not_wait_for_a_batch_to_be_ready(clock: FakeClock) -> None:
    async def scenario() -> None:
        events = Events()
        scheduler = make_scheduler(events, max_batch_size=8, max_wait_ms=HOUR_MS)
        group = make_group()
        expired = await submit(scheduler, group, 0, deadline=clock.monotonic() - 1)
        waiting = await submit(scheduler, group, 1)
        assert scheduler.take(timeout=0) is None  # no batch yet, but the expired one is gone
        with pytest.raises(DeadlineExceeded):
            await expired
        assert scheduler.queued_instances == 1
        assert events.drops == [("digits", "deadline")]
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    run(scenario)


def test_a_cancelled_request_is_withdrawn_and_frees_its_slot() -> None:
    async def scenario() -> None:
        events = Events()
        scheduler = make_scheduler(
            events, max_batch_size=2, max_queue_instances=2, max_wait_ms=HOUR_MS
        )
        group = make_group(model="breast_cancer")
        # One group full to the queue limit, but the batch is not yet taken.
        first = await submit(scheduler, group, 0)
        second = await submit(scheduler, group, 1)
        with pytest.raises(Overloaded):
            await (await submit(scheduler, group, 9))

        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert scheduler.queued_instances == 1
        assert events.drops == [("breast_cancer", "cancelled")]
        assert events.depth["breast_cancer"] == 1

        third = await submit(scheduler, group, 2)  # the freed slot is usable at once
        batch = scheduler.take(timeout=0)
        assert idents(batch) == [1, 2]  # the cancelled request never reaches an executor
        answer(batch)
        assert await asyncio.gather(second, third) == ["result 1", "result 2"]
        assert events.depth["breast_cancer"] == 0

    run(scenario)


def test_cancelling_a_taken_request_changes_nothing() -> None:
    async def scenario() -> None:
        events = Events()
        scheduler = make_scheduler(events, max_batch_size=1, max_wait_ms=HOUR_MS)
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, c: loop_errors.append(c))
        task = await submit(scheduler, make_group(), 0)
        batch = scheduler.take(timeout=0)
        assert idents(batch) == [0]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        answer(batch)  # the executor finishes anyway; the result has nobody to go to
        await asyncio.sleep(0)  # let the hand-over run: it must not fail on the cancelled future
        assert loop_errors == []
        assert events.drops == []  # already out of the queue: not a drop
        assert scheduler.queued_instances == 0
        assert events.depth["digits"] == 0

    run(scenario)


def test_the_group_with_the_oldest_request_goes_first() -> None:
    """Not insertion order, not round-robin: after a0 is taken, group A (created first) holds
    only a1, which is younger than b0, so B goes next."""

    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=1, max_wait_ms=HOUR_MS)
        a, b = make_group(task="saliency"), make_group(task="grad_cam")
        tasks = []
        for group, ident in ((a, 0), (b, 10), (a, 1), (b, 11), (a, 2)):
            tasks.append(await submit(scheduler, group, ident))
            tick()
        taken = [scheduler.take(timeout=0) for _ in range(5)]
        assert [idents(batch)[0] for batch in taken] == [0, 10, 1, 11, 2]
        for batch in taken:
            answer(batch)
        await asyncio.gather(*tasks)

    run(scenario)


def test_close_refuses_new_requests_and_drains_the_queue_at_once(
    in_thread: Callable[[Callable[[], Any]], tuple[threading.Thread, list[Any]]],
) -> None:
    async def scenario() -> None:
        scheduler = make_scheduler(max_batch_size=8, max_wait_ms=HOUR_MS)
        a, b = make_group(task="saliency"), make_group(task="grad_cam")
        tasks = [await submit(scheduler, a, 0)]
        tick()
        tasks.append(await submit(scheduler, b, 10))
        tasks.append(await submit(scheduler, a, 1))
        assert scheduler.take(timeout=0) is None

        scheduler.close()
        with pytest.raises(Unavailable):
            await (await submit(scheduler, a, 99))
        # Accepted requests are not failed: executors take them without waiting for company.
        assert not any(t.done() for t in tasks)
        first, second = scheduler.take(timeout=0), scheduler.take(timeout=0)
        assert (idents(first), idents(second)) == ([0, 1], [10])
        answer(first)
        answer(second)
        assert await asyncio.gather(*tasks) == ["result 0", "result 10", "result 1"]

        # Drained and closed: an executor's blocking take returns None instead of waiting.
        thread, result = in_thread(lambda: scheduler.take(timeout=None))
        await asyncio.to_thread(thread.join, 60)
        assert not thread.is_alive() and result == [None]

    run(scenario)


def test_close_wakes_an_executor_blocked_on_an_empty_queue(
    in_thread: Callable[[Callable[[], Any]], tuple[threading.Thread, list[Any]]],
) -> None:
    scheduler = make_scheduler(max_wait_ms=HOUR_MS)
    thread, result = in_thread(lambda: scheduler.take(timeout=None))
    scheduler.close()
    thread.join(60)
    assert not thread.is_alive(), "take() did not return after close()"
    assert result == [None]
