"""Lanes: how a device's executors share its threads, and that each lane's thread runs its
batches with its own share."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, cast

import pytest
import torch
from sidelight.batching.executor import DeviceExecutor
from sidelight.batching.lanes import (
    DEFAULT_CPU_LANES,
    HEAVY_CALL_S,
    Lane,
    LaneOverlap,
    is_heavy,
    lanes_for,
)
from sidelight.batching.scheduler import Group, Scheduler
from sidelight.methods.base import Attribution
from sidelight.models.model import Model
from sidelight.settings import BatchingSettings

CPU = torch.device("cpu")
BOUND_S = 10.0


def no_model(name: str, version: str, device: torch.device) -> Model:
    """The replica of these tests' executors: their methods do not use a model."""
    return cast(Model, None)


@pytest.mark.parametrize(
    ("cpu_lanes", "threads", "expected"),
    [
        (None, 2, [Lane(0, 1, 2), Lane(1, 1, 2)]),  # the default on two cores
        (None, 8, [Lane(0, 4, 8), Lane(1, 4, 8)]),
        (None, 1, [Lane(0, None)]),  # one thread: one lane, torch's own setting
        (1, 8, [Lane(0, None)]),
        (3, 8, [Lane(0, 3, 8), Lane(1, 3, 8), Lane(2, 2, 8)]),  # the remainder to the first
        (4, 2, [Lane(0, 1, 2), Lane(1, 1, 2), Lane(2, 1, 2), Lane(3, 1, 2)]),  # never below one
    ],
)
def test_cpu_threads_are_split_between_lanes(
    cpu_lanes: int | None, threads: int, expected: list[Lane]
) -> None:
    assert lanes_for(CPU, cpu_lanes, threads) == expected


def test_default_is_two_lanes() -> None:
    assert DEFAULT_CPU_LANES == 2


def test_a_cuda_device_runs_one_lane_whatever_the_cpu_setting() -> None:
    # torch.device needs no CUDA to describe one.
    assert lanes_for(torch.device("cuda:0"), 4, 8) == [Lane(0, None)]


def test_settings_refuse_zero_lanes() -> None:
    with pytest.raises(ValueError, match="cpu_lanes"):
        BatchingSettings(cpu_lanes=0)


def test_each_lane_runs_its_batches_on_its_own_thread_count() -> None:
    """Two lanes of one scheduler, 1 and 2 threads: every batch reports the intra-op thread
    count of the thread that ran it, and the test's own thread keeps its setting."""
    before = torch.get_num_threads()
    seen: list[tuple[str, int]] = []
    both_running = threading.Barrier(2, timeout=BOUND_S)

    def run(model: object, inputs: torch.Tensor, *rest: object) -> Attribution:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        both_running.wait()  # two batches at once: one per lane
        return Attribution(inputs, inputs, torch.zeros(len(inputs), dtype=torch.int64), 1)

    group = Group("g", "m", "1", "saliency", run, lambda result, a, b: result.attributions[a:b])
    settings = BatchingSettings(max_batch_size=1, max_wait_ms=0.0)
    scheduler = Scheduler(settings)
    scheduler.mark_heavy(group, True)  # the second lane takes only heavy groups
    executors = [
        DeviceExecutor(CPU, scheduler, lambda *a: None, settings, threads=t, lane=i)  # type: ignore[arg-type,return-value]
        for i, t in enumerate((1, 2))
    ]
    for executor in executors:
        executor.start()

    async def two_requests() -> list[torch.Tensor]:
        targets = torch.zeros(1, dtype=torch.int64)
        return await asyncio.gather(
            *(
                scheduler.submit(group, torch.full((1, 1), float(i)), targets, 0, None)
                for i in (1, 2)
            )
        )

    try:
        answers = asyncio.run(asyncio.wait_for(two_requests(), BOUND_S))
    finally:
        scheduler.close()
        for executor in executors:
            executor.join(BOUND_S)
    assert sorted(float(a) for a in answers) == [1.0, 2.0]
    assert sorted(seen) == [("executor-cpu-0", 1), ("executor-cpu-1", 2)]
    assert torch.get_num_threads() == before


def test_a_group_is_heavy_when_its_calls_last_long_on_average() -> None:
    assert not is_heavy([])
    assert is_heavy([(8, HEAVY_CALL_S)])
    assert not is_heavy([(8, HEAVY_CALL_S / 2)])
    assert is_heavy([(8, HEAVY_CALL_S / 2), (8, HEAVY_CALL_S * 1.5)])  # on average
    assert not is_heavy([(8, HEAVY_CALL_S * 1.5), (8, 0.0), (8, 0.0)])
    assert not is_heavy([(256, HEAVY_CALL_S * 10)], rows_per_instance=32)  # IG's steps


def test_only_the_first_lane_runs_a_light_group_and_both_a_heavy_one() -> None:
    """Executors mark a group after each batch from its calls' times: a group of short calls
    stays on lane 0; once a batch's calls last HEAVY_CALL_S, lane 1 takes it too."""
    lanes_seen: list[str] = []
    call_seconds = [0.0]

    def run(
        model: object, inputs: torch.Tensor, _t: object, _s: object, _c: int, measure
    ) -> Attribution:  # type: ignore[no-untyped-def]
        lanes_seen.append(threading.current_thread().name)

        # A model call that lasts `call_seconds` on the host clock the executor reads.
        measure(len(inputs), lambda: time.sleep(call_seconds[0]))
        return Attribution(inputs, inputs, torch.zeros(len(inputs), dtype=torch.int64), 1)

    group = Group("g", "m", "1", "saliency", run, lambda result, a, b: result.attributions[a:b])
    scheduler, executors = two_lanes()

    def requests(count: int) -> Coroutine[Any, Any, None]:
        return one_row_requests(scheduler, group, count)

    try:
        asyncio.run(asyncio.wait_for(requests(8), BOUND_S))  # light: short calls
        assert set(lanes_seen) == {"executor-cpu-0"}
        call_seconds[0] = HEAVY_CALL_S * 1.5
        asyncio.run(asyncio.wait_for(requests(1), BOUND_S))  # one long batch marks it heavy
        lanes_seen.clear()
        asyncio.run(asyncio.wait_for(requests(8), BOUND_S))
        assert set(lanes_seen) == {"executor-cpu-0", "executor-cpu-1"}
    finally:
        scheduler.close()
        for executor in executors:
            executor.join(BOUND_S)


def test_a_heavy_only_take_leaves_light_groups_to_the_first_lane_even_when_closing() -> None:
    group = Group("g", "m", "1", "saliency", lambda *a: None, lambda result, a, b: result)  # type: ignore[arg-type,return-value]
    scheduler = Scheduler(BatchingSettings(max_wait_ms=0.0))

    async def scenario() -> None:
        targets = torch.zeros(1, dtype=torch.int64)
        answer = asyncio.create_task(scheduler.submit(group, torch.ones(1, 1), targets, 0, None))
        await asyncio.sleep(0)  # the request is queued
        assert scheduler.take(timeout=0.0, heavy_only=True) is None  # not marked heavy
        scheduler.close()
        assert scheduler.take(heavy_only=True) is None  # returns at once: not its to drain
        batch = scheduler.take()  # the first lane drains it
        assert batch is not None and batch.requests[0].group is group
        batch.requests[0].resolve("done")
        assert await answer == "done"

    asyncio.run(asyncio.wait_for(scenario(), BOUND_S))


def test_a_group_of_many_rows_per_instance_stays_on_the_first_lane() -> None:
    """IG's steps, SmoothGrad's samples: long calls, but two lanes would hold two of them."""
    lanes_seen: list[str] = []

    def run(
        model: object, inputs: torch.Tensor, _t: object, _s: object, _c: int, measure
    ) -> Attribution:  # type: ignore[no-untyped-def]
        lanes_seen.append(threading.current_thread().name)
        measure(len(inputs) * 32, lambda: time.sleep(HEAVY_CALL_S * 1.5))
        return Attribution(inputs, inputs, torch.zeros(len(inputs), dtype=torch.int64), 1)

    group = Group(
        "ig", "m", "1", "integrated_gradients", run, lambda r, a, b: r.attributions[a:b], 32
    )
    scheduler, executors = two_lanes()

    def requests(count: int) -> Coroutine[Any, Any, None]:
        return one_row_requests(scheduler, group, count)

    try:
        asyncio.run(asyncio.wait_for(requests(6), BOUND_S))
    finally:
        scheduler.close()
        for executor in executors:
            executor.join(BOUND_S)
    assert set(lanes_seen) == {"executor-cpu-0"}


def test_a_lane_is_alone_until_lanes_overlap_and_again_once_they_have_not_for_the_quiet_time() -> (
    None
):
    now = [0.0]
    overlap = LaneOverlap(quiet_s=1.0, clock=lambda: now[0])
    assert overlap.begin()  # nobody else ran, ever
    overlap.end()
    now[0] = 0.1
    assert overlap.begin()  # one lane after another (a lone caller): never at once
    now[0] = 0.2
    assert not overlap.begin()  # a second lane while the first runs
    now[0] = 0.5
    overlap.end()  # they ran at once until now
    overlap.end()
    now[0] = 1.4
    assert not overlap.begin()  # 0.9 s after the overlap: still under load
    overlap.end()
    now[0] = 1.5
    assert overlap.begin()  # quiet for 1 s: alone again
    overlap.end()


def test_a_lane_runs_on_every_thread_while_alone_and_on_its_share_beside_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One executor of two lanes' overlap, the other lane played by the test. The executor
    sets torch's thread count only when it changes: each setting empties oneDNN's cache."""
    seen: list[int] = []
    settings_made: list[int] = []
    set_num_threads = torch.set_num_threads

    def counted(threads: int) -> None:
        settings_made.append(threads)
        set_num_threads(threads)

    monkeypatch.setattr(torch, "set_num_threads", counted)

    def run(model: object, inputs: torch.Tensor, *rest: object) -> Attribution:
        seen.append(torch.get_num_threads())
        return Attribution(inputs, inputs, torch.zeros(len(inputs), dtype=torch.int64), 1)

    group = Group("g", "m", "1", "saliency", run, lambda result, a, b: result.attributions[a:b])
    settings = BatchingSettings(max_batch_size=1, max_wait_ms=0.0)
    scheduler = Scheduler(settings)
    now = [0.0]
    overlap = LaneOverlap(quiet_s=1.0, clock=lambda: now[0])
    lane = DeviceExecutor(
        CPU, scheduler, no_model, settings, threads=1, alone_threads=2, overlap=overlap
    )
    lane.start()

    def one() -> None:
        targets = torch.zeros(1, dtype=torch.int64)
        asyncio.run(
            asyncio.wait_for(scheduler.submit(group, torch.ones(1, 1), targets, 0, None), BOUND_S)
        )

    try:
        one()  # alone
        overlap.begin()  # the other lane runs a batch
        one()
        overlap.end()
        one()  # the other lane stopped, but they overlapped under a second ago
        now[0] = 5.0
        one()
    finally:
        scheduler.close()
        lane.join(BOUND_S)
    assert seen == [2, 1, 1, 2]
    assert settings_made == [1, 2, 1, 2]  # the executor's start, then one per change


def test_two_lanes_that_meet_take_their_shares_from_then_on() -> None:
    """Two lanes, two batches at once, twice: the first lane to start the first pair was
    alone (every thread), the second not; in the second pair, both take their share."""
    seen: list[list[int]] = [[], []]
    pair = [0]
    both_running = threading.Barrier(2, timeout=BOUND_S)

    def run(model: object, inputs: torch.Tensor, *rest: object) -> Attribution:
        seen[pair[0]].append(torch.get_num_threads())
        both_running.wait()
        return Attribution(inputs, inputs, torch.zeros(len(inputs), dtype=torch.int64), 1)

    group = Group("g", "m", "1", "saliency", run, lambda result, a, b: result.attributions[a:b])
    settings = BatchingSettings(max_batch_size=1, max_wait_ms=0.0)
    scheduler = Scheduler(settings)
    scheduler.mark_heavy(group, True)
    overlap = LaneOverlap(quiet_s=BOUND_S * 10)  # no pair of this test is quiet for that long
    executors = [
        DeviceExecutor(
            CPU, scheduler, no_model, settings, threads=1, alone_threads=2, overlap=overlap, lane=i
        )
        for i in (0, 1)
    ]
    for executor in executors:
        executor.start()
    try:
        asyncio.run(asyncio.wait_for(one_row_requests(scheduler, group, 2), BOUND_S))
        pair[0] = 1
        asyncio.run(asyncio.wait_for(one_row_requests(scheduler, group, 2), BOUND_S))
    finally:
        scheduler.close()
        for executor in executors:
            executor.join(BOUND_S)
    assert sorted(seen[0]) == [1, 2]
    assert seen[1] == [1, 1]


def two_lanes() -> tuple[Scheduler, list[DeviceExecutor]]:
    """A scheduler taking one instance a batch, and two started lanes of one thread each."""
    settings = BatchingSettings(max_batch_size=1, max_wait_ms=0.0)
    scheduler = Scheduler(settings)
    executors = [
        DeviceExecutor(CPU, scheduler, lambda *a: None, settings, threads=1, lane=i)  # type: ignore[arg-type,return-value]
        for i in (0, 1)
    ]
    for executor in executors:
        executor.start()
    return scheduler, executors


async def one_row_requests(scheduler: Scheduler, group: Group, count: int) -> None:
    targets = torch.zeros(1, dtype=torch.int64)
    await asyncio.gather(
        *(scheduler.submit(group, torch.ones(1, 1), targets, 0, None) for _ in range(count))
    )
