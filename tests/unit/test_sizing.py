"""ChunkSizer: the adaptive rows-per-call of one batch group, fed synthetic measurements.

The sizer never reads a clock: the executor times each model call (sidelight.batching.timing)
and calls `record(rows, seconds)`.
Here the "device" is a cost model, so every expected size can be worked out by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from sidelight.batching.sizing import (
    GAIN,
    MAX_PARTIAL_CALLS,
    SAMPLES_PER_SIZE,
    START_ROWS,
    WARMUP_CALLS,
    ChunkSizer,
)
from sidelight.batching.timing import CallTimer
from sidelight.methods.base import Attribution, Batch
from sidelight.methods.chunking import run_chunked

Cost = Callable[[int, int], float]


def call_cost(overhead: float, per_row: float) -> Cost:
    """Seconds for `rows` rows in calls of `chunk` rows: a fixed cost per call plus per row."""

    def seconds(rows: int, chunk: int) -> float:
        calls = -(-rows // chunk)
        return calls * overhead + rows * per_row

    return seconds


def feed(
    sizer: ChunkSizer, seconds_per_row: float, times: int = WARMUP_CALLS + SAMPLES_PER_SIZE
) -> None:
    """`times` full calls at the current size, each taking `seconds_per_row` per row."""
    for _ in range(times):
        rows = 4 * sizer.current
        sizer.record(rows, seconds_per_row * rows)


def climb(sizer: ChunkSizer, seconds: Cost, limit: int = 100) -> list[int]:
    """Drive the sizer as the executor does until it settles; the sizes it used, in order."""
    used = [sizer.current]
    for _ in range(limit):
        if sizer.settled:
            return used
        rows = 4 * sizer.current
        sizer.record(rows, seconds(rows, sizer.current))
        if sizer.current != used[-1]:
            used.append(sizer.current)
    raise AssertionError(f"never settled: {used}")


def test_starts_at_eight_rows_within_the_bound() -> None:
    assert START_ROWS == 8
    sizer = ChunkSizer(512)
    assert (sizer.current, sizer.settled) == (8, False)
    assert ChunkSizer(5).current == 5  # the bound wins over the start


def test_fixed_chunks_use_the_bound_and_never_move() -> None:
    sizer = ChunkSizer(96, adaptive=False)
    assert (sizer.current, sizer.settled) == (96, True)
    feed(sizer, 1.0)
    assert sizer.current == 96


def test_a_size_is_judged_on_several_full_calls() -> None:
    sizer = ChunkSizer(512)
    feed(sizer, 1.0, times=WARMUP_CALLS + SAMPLES_PER_SIZE - 1)
    assert sizer.current == 8
    feed(sizer, 1.0, times=1)
    assert sizer.current == 16


def test_the_first_calls_at_a_size_and_outliers_do_not_decide() -> None:
    """A new shape's first call pays for allocation and kernel plans; one slow call in seven
    (a neighbour's burst) moves the median of the rest by nothing."""
    sizer = ChunkSizer(512)
    feed(sizer, 1.0)
    assert sizer.current == 16
    sizer.record(64, 64 * 50.0)  # the warm-up call at 16 rows: very slow, left out
    for index in range(SAMPLES_PER_SIZE):
        slow = index == 3
        sizer.record(64, 64 * (5.0 if slow else 0.5))  # 50% better, one outlier
    assert (sizer.current, sizer.settled) == (32, False)


def test_partial_and_empty_measurements_are_ignored() -> None:
    sizer = ChunkSizer(512)
    for _ in range(10):
        sizer.record(4, 1.0)  # half a chunk or less: says nothing about the size
        sizer.record(64, 0.0)  # a clock that did not move
        sizer.record(64, -1.0)
    assert (sizer.current, sizer.settled) == (8, False)


def test_doubles_while_the_time_per_row_improves_enough_then_goes_back() -> None:
    sizer = ChunkSizer(512)
    feed(sizer, 1.0)
    assert sizer.current == 16
    feed(sizer, 0.5)  # 50% better: keep doubling
    assert sizer.current == 32
    feed(sizer, 0.5 * (1 - GAIN - 0.01))  # 6% better: still worth it
    assert sizer.current == 64
    feed(sizer, 0.47 * (1 - GAIN + 0.01))  # only 4% better than 32: back to 32, for good
    assert (sizer.current, sizer.settled) == (32, True)
    feed(sizer, 0.001)  # later measurements no longer move it
    assert sizer.current == 32


def test_a_size_that_is_slower_sends_it_back() -> None:
    sizer = ChunkSizer(512)
    feed(sizer, 1.0)
    feed(sizer, 1.2)
    assert (sizer.current, sizer.settled) == (8, True)


def test_a_large_model_settles_where_doubling_stops_paying() -> None:
    # Time per row = overhead / chunk + per_row: each doubling halves the first term.
    # 1024 -> 2048 saves under 5% (0.01098 -> 0.01049 s per row), so 1024 it is.
    seconds = call_cost(overhead=1.0, per_row=0.01)
    sizer = ChunkSizer(4096)
    used = climb(sizer, seconds)
    assert used == [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 1024]
    assert sizer.current == 1024


def test_a_model_that_always_gains_climbs_to_the_bound_and_no_further() -> None:
    seconds = call_cost(overhead=1.0, per_row=0.0)  # a GPU with memory to spare
    sizer = ChunkSizer(256)
    assert climb(sizer, seconds) == [8, 16, 32, 64, 128, 256]
    assert sizer.current == 256


@pytest.mark.parametrize(("bound", "settles_at"), [(20, 16), (100, 64), (8, 8), (3, 3)])
def test_never_tries_a_size_past_a_bound_that_is_not_a_power_of_two(
    bound: int, settles_at: int
) -> None:
    sizer = ChunkSizer(bound)
    used = climb(sizer, call_cost(overhead=1.0, per_row=0.0))
    assert max(used) <= bound
    assert sizer.current == settles_at


def test_a_group_with_many_rows_per_instance_starts_at_one_instance() -> None:
    """IG with 32 steps: one instance per call from the start, never more than the bound."""
    assert ChunkSizer(512, start=32).current == 32
    assert ChunkSizer(512, start=4096).current == 512
    assert ChunkSizer(512, start=32, adaptive=False).current == 512


def test_the_executor_starts_each_group_at_its_rows_per_instance() -> None:
    from sidelight.batching.executor import DeviceExecutor
    from sidelight.batching.scheduler import Group, Scheduler
    from sidelight.settings import BatchingSettings

    settings = BatchingSettings()
    executor = DeviceExecutor(
        torch.device("cpu"),
        Scheduler(settings),
        lambda *args: None,
        settings,  # type: ignore[arg-type,return-value]
    )
    ig = Group("ig", "m", "1", "integrated_gradients", print, print, rows_per_instance=32)
    saliency = Group("s", "m", "1", "saliency", print, print)
    assert executor._sizer(ig).current == 32
    assert executor._sizer(saliency).current == START_ROWS


def test_the_call_timer_and_run_chunked_time_each_slice() -> None:
    """The executor's timer sees every slice of a chunked batch with its rows."""
    timer = CallTimer(torch.device("cpu"))
    batch = Batch(torch.zeros(10, 3), torch.zeros(10, dtype=torch.int64), torch.zeros(10))

    def attribute(part: Batch) -> Attribution:
        return Attribution(part.inputs, part.inputs, part.targets, 2)

    result = run_chunked(batch, 2, 8, attribute, timer.measure)  # at most 4 instances a slice
    assert torch.equal(result.attributions, batch.inputs)
    timings = timer.timings()
    assert [rows for rows, _ in timings] == [8, 6, 6]  # equal parts, not 4 + 4 + 2
    assert all(seconds > 0 for _, seconds in timings)


def test_from_a_large_start_it_first_walks_down_while_halving_costs_nothing() -> None:
    """ResNet-18 IG on a CPU: small calls stay in cache, so per row they are no slower."""

    def seconds(rows: int, chunk: int) -> float:  # per row cost grows with the chunk
        return rows * (1.0 + 0.1 * chunk.bit_length())

    sizer = ChunkSizer(512, start=32)
    assert climb(sizer, seconds) == [32, 16, 8]
    assert sizer.settled


def test_from_a_large_start_a_tiny_model_goes_down_once_then_climbs() -> None:
    sizer = ChunkSizer(512, start=32)
    used = climb(sizer, call_cost(overhead=1.0, per_row=0.0))
    assert used == [32, 16, 64, 128, 256, 512]  # 32 was measured on the way down
    assert sizer.current == 512


def test_a_size_the_batches_never_fill_is_given_up_for_the_one_below() -> None:
    """Requests of one instance with 32 IG steps: calls of 32 rows can never judge 64."""
    sizer = ChunkSizer(512)
    feed(sizer, 1.0)  # 8
    feed(sizer, 0.5)  # 16
    feed(sizer, 0.25)  # 32, climbs to 64
    assert sizer.current == 64
    for _ in range(MAX_PARTIAL_CALLS):
        sizer.record(32, 32 * 0.25)
    assert (sizer.current, sizer.settled) == (32, True)


def test_a_call_of_more_than_half_a_chunk_is_judged() -> None:
    """At a chunk of 8, batches of 10 run as 5 + 5: those calls judge the size 8."""
    sizer = ChunkSizer(512)
    for _ in range(WARMUP_CALLS + SAMPLES_PER_SIZE):
        sizer.record(5, 5 * 1.0)
    assert sizer.current == 16


@pytest.mark.parametrize(
    ("instances", "per_call", "expected"),
    [(10, 8, [5, 5]), (17, 8, [6, 6, 5]), (16, 8, [8, 8]), (3, 8, [3]), (7, 1, [1] * 7)],
)
def test_a_batch_larger_than_a_chunk_is_split_into_equal_parts(
    instances: int, per_call: int, expected: list[int]
) -> None:
    batch = Batch(
        torch.arange(instances, dtype=torch.float32).unsqueeze(1),
        torch.arange(instances),
        torch.zeros(instances),
    )
    sizes: list[int] = []

    def attribute(part: Batch) -> Attribution:
        sizes.append(len(part))
        return Attribution(part.inputs * 2, part.inputs, part.targets, 1)

    result = run_chunked(batch, 1, per_call, attribute)
    assert sizes == expected
    assert torch.equal(result.attributions, batch.inputs * 2)  # in order
    assert torch.equal(result.targets, batch.targets)
