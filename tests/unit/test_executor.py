"""The device executor with a real scheduler and its own thread: a batch whose callers have all
gone stops before its next model call; one that someone still waits for runs to the end.

The batches bring their own work (no model is loaded): each "model call" records itself, and
the first one blocks until the test has cancelled what it wants cancelled, so the order of
events is fixed by the test, not by the machine's speed. Threads are joined with generous bounds
that only matter when the code hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest
import torch
from sidelight.batching.executor import BatchReport, DeviceExecutor
from sidelight.batching.scheduler import Group, Pending, Scheduler
from sidelight.methods.base import Attribution, Batch
from sidelight.methods.chunking import Measure, run_chunked
from sidelight.settings import BatchingSettings

BOUND_S = 10.0


class Work:
    """A group's runner: one model call per instance; the first call waits for `release`."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # first value of each instance put through a "call"
        self.first_call_started = threading.Event()
        self.release = threading.Event()

    def run(
        self,
        model: object,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seeds: torch.Tensor,
        chunk: int,
        measure: Measure,
    ) -> Attribution:
        def attribute(part: Batch) -> Attribution:
            self.calls.append(int(part.inputs[0, 0]))
            if len(self.calls) == 1:
                self.first_call_started.set()
                assert self.release.wait(BOUND_S)
            return Attribution(part.inputs * 2, part.inputs, part.targets, 1)

        return run_chunked(Batch(inputs, targets, seeds), 1, 1, attribute, measure)


def split(result: Attribution, start: int, stop: int) -> torch.Tensor:
    return result.attributions[start:stop]


def rows(first: int, count: int) -> torch.Tensor:
    return torch.arange(first, first + count, dtype=torch.float32).unsqueeze(1)


async def submit(
    scheduler: Scheduler, group: Group, inputs: torch.Tensor, deadline: float | None = None
) -> Any:
    targets = torch.zeros(len(inputs), dtype=torch.int64)
    return await scheduler.submit(group, inputs, targets, 0, deadline)


async def cancel_during_the_first_call(
    executor: DeviceExecutor, work: Work, gone: asyncio.Task[Any]
) -> None:
    """Start the executor once the submitted requests are queued (so they share one batch),
    cancel `gone` while the batch's first model call runs, then let the call finish."""
    await asyncio.sleep(0)
    executor.start()
    assert await asyncio.to_thread(work.first_call_started.wait, BOUND_S)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    work.release.set()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, BOUND_S))


@pytest.fixture
def served() -> Any:
    """(scheduler, executor, reports, work, group); the executor starts when the test says."""
    settings = BatchingSettings(max_wait_ms=0.0)
    scheduler = Scheduler(settings)
    reports: list[BatchReport] = []
    executor = DeviceExecutor(
        torch.device("cpu"),
        scheduler,
        lambda *args: None,
        settings,
        reports.append,  # type: ignore[arg-type,return-value]
    )
    work = Work()
    group = Group("g", "m", "1", "saliency", work.run, split)
    yield scheduler, executor, reports, work, group
    work.release.set()
    scheduler.close()
    executor.join(BOUND_S)
    assert not executor._thread.is_alive()


def test_a_batch_whose_callers_all_cancelled_stops_before_its_next_call(served: Any) -> None:
    scheduler, executor, reports, work, group = served

    async def scenario() -> None:
        gone = asyncio.create_task(submit(scheduler, group, rows(0, 10)))
        await cancel_during_the_first_call(executor, work, gone)
        # The executor goes on: the next request is answered, in full.
        answer = await submit(scheduler, group, rows(100, 3))
        assert torch.equal(answer, rows(100, 3) * 2)

    run(scenario())
    assert work.calls == [0, 100, 101, 102]  # one call of the 10 instances, then the next batch
    assert [(r.instances, r.abandoned, r.failed) for r in reports] == [
        (10, True, False),
        (3, False, False),
    ]


def test_a_batch_runs_to_the_end_while_one_caller_still_waits(served: Any) -> None:
    scheduler, executor, reports, work, group = served

    async def scenario() -> None:
        gone = asyncio.create_task(submit(scheduler, group, rows(0, 4)))
        staying = asyncio.create_task(submit(scheduler, group, rows(10, 4)))
        await cancel_during_the_first_call(executor, work, gone)  # one batch of both requests
        assert torch.equal(await staying, rows(10, 4) * 2)

    run(scenario())
    assert work.calls == [0, 1, 2, 3, 10, 11, 12, 13]
    assert [(r.instances, r.abandoned) for r in reports] == [(8, False)]


def test_a_request_is_unwanted_once_cancelled_or_past_its_deadline() -> None:
    loop = asyncio.new_event_loop()
    try:
        now = time.monotonic()

        def pending(deadline: float | None) -> Pending:
            group = Group("g", "m", "1", "saliency", Work().run, split)
            inputs = rows(0, 1)
            return Pending(
                group, inputs, inputs[:, 0].long(), 0, deadline, loop, loop.create_future()
            )

        assert not pending(None).unwanted(now)
        assert not pending(now + 1.0).unwanted(now)
        assert pending(now).unwanted(now)
        assert pending(now - 1.0).unwanted(now)
        cancelled = pending(None)
        cancelled.left = True
        assert cancelled.unwanted(now)
    finally:
        loop.close()
