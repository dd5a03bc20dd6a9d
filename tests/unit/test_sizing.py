"""ChunkSizer: the adaptive rows-per-call of one batch group, fed synthetic measurements.

The sizer never reads a clock: the executor times each model call (sidelight.batching.timing)
and reports a batch's calls with `record_batch(chunk, [(rows, seconds), ...])`.
Here the "device" is a cost model, so every expected size can be worked out by hand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from sidelight.batching.executor import DeviceExecutor
from sidelight.batching.scheduler import Group, Pending, Scheduler, TakenBatch
from sidelight.batching.sizing import (
    BATCHES_PER_SIZE,
    MAX_SMALL_BATCHES,
    MIN_BATCHES_PER_SIZE,
    SECONDS_ALONE,
    SECONDS_PER_SIZE,
    START_ROWS,
    ChunkSizer,
    Verdict,
)
from sidelight.batching.timing import CallTimer
from sidelight.explanations import run_predict
from sidelight.methods.base import Attribution, Batch
from sidelight.methods.chunking import Measure, run_chunked
from sidelight.settings import BatchingSettings

Cost = Callable[[int, int], float]


def call_cost(overhead: float, per_row: float) -> Cost:
    """Seconds for a call of `rows` rows at a chunk of `chunk`: a fixed cost plus per row."""

    def seconds(rows: int, chunk: int) -> float:
        return overhead + rows * per_row

    return seconds


def batch(sizer: ChunkSizer, seconds: Cost, rows: int | None = None) -> Verdict | None:
    """One batch of `rows` rows (default: four of the biggest size compared) run as the
    executor runs it: at `sizer.current` rows per call, in equal parts."""
    chunk = sizer.current
    rows = 4 * max(sizer.comparing or (chunk,)) if rows is None else rows
    calls = -(-rows // chunk)
    small, larger = divmod(rows, calls)
    parts = [small + (1 if index < larger else 0) for index in range(calls)]
    return sizer.record_batch(chunk, [(part, seconds(part, chunk)) for part in parts])


def per_row(cost: dict[int, float]) -> Cost:
    """A device on which a call at chunk `c` costs `cost[c]` seconds per row."""
    return lambda rows, chunk: rows * cost[chunk]


def climb(sizer: ChunkSizer, seconds: Cost, limit: int = 1000) -> list[tuple[int, int, int]]:
    """Batches until the sizer settles; each comparison's (smaller, bigger, kept), in order."""
    verdicts: list[tuple[int, int, int]] = []
    for _ in range(limit):
        if sizer.settled:
            return verdicts
        verdict = batch(sizer, seconds)
        if verdict is not None:
            verdicts.append((verdict.smaller, verdict.bigger, verdict.kept))
    raise AssertionError(f"never settled: {verdicts}")


# One sample per batch; the first call at each size is left out, but a default batch of four
# chunks still leaves three calls for its sample.
BATCHES_PER_COMPARISON = 2 * MIN_BATCHES_PER_SIZE


def test_starts_at_eight_rows_within_the_bound() -> None:
    assert START_ROWS == 8
    sizer = ChunkSizer(512)
    assert (sizer.current, sizer.settled, sizer.comparing) == (8, False, (8, 16))
    assert ChunkSizer(5).current == 5  # the bound wins over the start
    assert ChunkSizer(5).settled  # and there is nothing to compare it with


def test_fixed_chunks_use_the_bound_and_never_move() -> None:
    sizer = ChunkSizer(96, adaptive=False)
    assert (sizer.current, sizer.settled, sizer.comparing) == (96, True, None)
    for _ in range(BATCHES_PER_COMPARISON):
        assert batch(sizer, call_cost(1.0, 0.0)) is None
    assert sizer.current == 96


def test_the_two_sizes_of_a_comparison_run_in_alternate_batches() -> None:
    sizer = ChunkSizer(512)
    used = []
    for _ in range(BATCHES_PER_COMPARISON - 1):
        used.append(sizer.current)
        assert batch(sizer, call_cost(1.0, 0.0)) is None
    assert used == [8, 16] * (BATCHES_PER_COMPARISON // 2 - 1) + [8]
    verdict = batch(sizer, call_cost(1.0, 0.0))  # the last sample of 16 decides
    assert verdict is not None and (verdict.smaller, verdict.bigger, verdict.kept) == (8, 16, 16)
    assert sizer.comparing == (16, 32)


def test_a_drift_in_the_load_does_not_decide_for_the_size_measured_first() -> None:
    """The machine slows down while the sizer measures (callers arrive, the audit log starts
    writing): every call gets slower, batch after batch. Measured one size after the other,
    the later size would look worse; measured in alternate batches, both see the same load."""
    batches = 0

    def seconds(rows: int, chunk: int) -> float:
        load = 1.0 + 0.1 * batches  # the 16th batch runs 2.5 times slower than the first
        return load * rows * {8: 1.0, 16: 0.8, 32: 0.79}[chunk]

    sizer = ChunkSizer(32)
    verdicts: list[tuple[int, int, int]] = []
    while not sizer.settled:
        verdict = batch(sizer, seconds)
        batches += 1
        if verdict is not None:
            verdicts.append((verdict.smaller, verdict.bigger, verdict.kept))
    assert verdicts == [(8, 16, 16), (16, 32, 16)]
    assert sizer.current == 16


def test_the_first_call_at_a_size_does_not_decide() -> None:
    """A new shape's first call pays for allocation and kernel plans: it is left out."""
    sizer = ChunkSizer(512)
    sizer.record_batch(8, [(8, 8 * 1.0), (8, 8 * 1.0)])  # batches of 16 rows
    sizer.record_batch(16, [(16, 16 * 50.0)])  # the first call of 16 rows: very slow, left out
    for _ in range(MIN_BATCHES_PER_SIZE):
        sizer.record_batch(8, [(8, 8 * 1.0), (8, 8 * 1.0)])
        verdict = sizer.record_batch(16, [(16, 16 * 0.5)])
    assert verdict is not None and verdict.kept == 16
    assert (verdict.smaller_per_row, verdict.bigger_per_row) == (1.0, 0.5)
    assert sizer.comparing == (16, 32)


def test_a_size_is_judged_on_many_short_batches_or_a_second_of_calls() -> None:
    """Short batches are noisy one by one: 30 of them make a figure. Long ones average their
    own noise: 7 make a figure once they add up to a second."""
    sizer = ChunkSizer(512)
    batches = 0
    while sizer.comparing == (8, 16):
        batch(sizer, call_cost(overhead=0.001, per_row=0.0))  # 1 ms calls
        batches += 1
    assert batches == 2 * BATCHES_PER_SIZE
    sizer = ChunkSizer(512)
    batches = 0
    while sizer.comparing == (8, 16):
        batch(sizer, call_cost(overhead=SECONDS_PER_SIZE / 4, per_row=0.0))  # 3+ calls a batch
        batches += 1
    assert batches == 2 * MIN_BATCHES_PER_SIZE


def test_a_size_whose_batches_last_seconds_alone_is_judged_on_one_batch() -> None:
    """ResNet-18 IG behind 32 callers: batches of ~25 s. One batch a size decides, and the
    slower size (32 rows a call, 15% slower per row) is dropped after one batch, not seven."""
    cost = {16: 0.05, 32: 0.0575}  # seconds per row: a batch of 14 x 32 rows ~ 22-26 s
    sizer = ChunkSizer(512, start=32)
    assert sizer.comparing == (16, 32)
    first = batch(sizer, per_row(cost), rows=14 * 32)
    assert first is None  # the held size (32) ran: ~24 s of warm calls, judged; now the half
    verdict = batch(sizer, per_row(cost), rows=14 * 32)
    assert verdict is not None and (verdict.smaller, verdict.bigger, verdict.kept) == (16, 32, 16)
    assert sizer.comparing == (8, 16)
    # Shorter batches, adding up to as long, still need the many batches of the noisy case.
    sizer = ChunkSizer(512)
    batches = 0
    while sizer.comparing == (8, 16) and batches < 100:
        batch(sizer, call_cost(overhead=SECONDS_ALONE / 20, per_row=0.0))  # 2-4 s batches
        batches += 1
    assert batches == 2 * MIN_BATCHES_PER_SIZE


def test_the_time_per_row_is_the_total_over_the_batches_not_a_median() -> None:
    """Throughput follows the total time: a size that is slower in most batches but spares the
    slow tail (fewer calls, fewer waits for the GIL) is the faster one."""
    sizer = ChunkSizer(16)
    index = 0
    verdict = None
    while verdict is None:
        spike = index // 2 % 4 == 0  # one pair of batches in four meets a contended moment
        cost = {8: 3.0 if spike else 1.0, 16: 1.5 if spike else 1.1}
        verdict = batch(sizer, per_row(cost), rows=16)
        index += 1
    assert verdict.kept == 16  # means 1.5 against 1.2; medians would say 1.0 against 1.1


def test_the_first_call_at_each_number_of_rows_is_left_out() -> None:
    """Batches come in every size: at 16 rows a call, batches of 9 to 16 rows are eight new
    shapes, each first call ten times slower (digits Grad-CAM on a CPU: 10-30 ms against 2-3).
    Counted, they would make 16 lose though it is twice as fast per row once warm."""

    def seconds(rows: int, chunk: int) -> float:
        cold = rows not in warm
        warm.add(rows)
        return rows * {8: 1.0, 16: 0.5}[chunk] * (10.0 if cold else 1.0)

    warm: set[int] = set()
    sizer = ChunkSizer(16)
    verdict = None
    for index in range(200):
        verdict = batch(sizer, seconds, rows=9 + index % 8)
        if verdict is not None:
            break
    assert verdict is not None and verdict.kept == 16
    assert (verdict.smaller_per_row, verdict.bigger_per_row) == (1.0, 0.5)


def test_empty_measurements_and_batches_too_small_for_the_bigger_size_are_ignored() -> None:
    sizer = ChunkSizer(512)
    for _ in range(10):
        chunk = sizer.current
        sizer.record_batch(chunk, [(8, 0.0), (8, -1.0)])  # a clock that did not move
        sizer.record_batch(chunk, [(8, 1.0)])  # 8 rows run alike at 8 and 16 rows a call
    assert (sizer.settled, sizer.comparing) == (False, (8, 16))


def test_a_shape_seen_in_a_batch_too_small_to_judge_is_warm_afterwards() -> None:
    """A small batch's call of 6 rows has paid for that shape: the first judged batch that runs
    6-row calls counts both of them."""
    sizer = ChunkSizer(16)
    sizer.record_batch(16, [(6, 6 * 50.0)])  # 6 rows run alike at 8 and 16: judges neither
    sizer.record_batch(8, [(6, 6 * 3.0), (6, 6 * 1.0)])  # batches of 12 from here on
    sizer.record_batch(16, [(12, 12 * 50.0)])  # the first call of 12 rows: left out
    verdict = None
    while verdict is None:
        verdict = sizer.record_batch(16, [(12, 12 * 0.5)]) or sizer.record_batch(
            8, [(6, 6 * 1.0), (6, 6 * 1.0)]
        )
    assert verdict.bigger_per_row == 0.5
    # 8 rows: 12 rows at 2.0 and 6 x 12 rows at 1.0, against 1.0 had the first call been left out
    assert verdict.smaller_per_row == pytest.approx(96 / 84)


def test_both_sizes_are_judged_on_the_same_batches() -> None:
    """Batches grow when the server is contended (the queue builds up while the event loop
    holds the GIL), and then every call is slower. Were each size judged on the batches that
    fill it, 16 rows (batches of 9 and more) would be judged on the contended moments only and
    8 rows on all: 16 would lose though it is 20% faster."""

    def seconds(rows: int, chunk: int) -> float:
        contention = 2.0 if batch_rows > 8 else 1.0
        return contention * rows * {8: 1.0, 16: 0.8}[chunk]

    sizer = ChunkSizer(16)
    verdict = None
    for index in range(200):
        batch_rows = 12 if index // 2 % 2 == 0 else 6  # each size sees both kinds of batch
        verdict = batch(sizer, seconds, rows=batch_rows)
        if verdict is not None:
            break
    assert verdict is not None and verdict.kept == 16
    assert verdict.smaller_per_row == 2.0  # judged on the batches of 12 only


def test_a_batch_at_a_size_not_being_compared_is_ignored() -> None:
    """A batch taken before a comparison ended reports after it: it judges nothing."""
    sizer = ChunkSizer(512)
    for _ in range(BATCHES_PER_COMPARISON):
        sizer.record_batch(64, [(64, 64 * 0.01)])
    assert sizer.comparing == (8, 16)


def test_doubles_while_the_time_per_row_improves_then_stays() -> None:
    cost = {8: 1.0, 16: 0.5, 32: 0.49, 64: 0.495}
    sizer = ChunkSizer(512)
    assert climb(sizer, per_row(cost)) == [(8, 16, 16), (16, 32, 32), (32, 64, 32)]
    assert (sizer.current, sizer.settled) == (32, True)
    assert batch(sizer, per_row({32: 0.001})) is None  # later batches no longer move it
    assert sizer.current == 32


def test_a_tie_goes_to_the_bigger_size() -> None:
    sizer = ChunkSizer(16)
    assert climb(sizer, per_row({8: 1.0, 16: 1.0})) == [(8, 16, 16)]


def test_a_size_that_is_slower_keeps_the_smaller() -> None:
    sizer = ChunkSizer(512)
    assert climb(sizer, per_row({8: 1.0, 16: 1.2})) == [(8, 16, 8)]
    assert (sizer.current, sizer.settled) == (8, True)


def test_a_large_model_settles_where_doubling_stops_paying() -> None:
    # Time per row = 1 / chunk (a fixed cost per call) + 0.01 + chunk / 10^4 (a call's working
    # set spilling out of cache): 0.0320 s at 64 rows, 0.0306 at 128, 0.0395 at 256.
    def seconds(rows: int, chunk: int) -> float:
        return 1.0 + rows * (0.01 + chunk / 1e4)

    sizer = ChunkSizer(4096)
    verdicts = climb(sizer, seconds)
    assert [kept for _, _, kept in verdicts] == [16, 32, 64, 128, 128]
    assert verdicts[-1][:2] == (128, 256)
    assert sizer.current == 128


def test_a_model_that_always_gains_climbs_to_the_bound_and_no_further() -> None:
    seconds = call_cost(overhead=1.0, per_row=0.0)  # a GPU with memory to spare
    sizer = ChunkSizer(256)
    assert [kept for _, _, kept in climb(sizer, seconds)] == [16, 32, 64, 128, 256]
    assert sizer.current == 256


@pytest.mark.parametrize(("bound", "settles_at"), [(20, 16), (100, 64), (8, 8), (3, 3)])
def test_never_tries_a_size_past_a_bound_that_is_not_a_power_of_two(
    bound: int, settles_at: int
) -> None:
    sizer = ChunkSizer(bound)
    verdicts = climb(sizer, call_cost(overhead=1.0, per_row=0.0))
    assert all(bigger <= bound for _, bigger, _ in verdicts)
    assert sizer.current == settles_at


def test_a_group_with_many_rows_per_instance_starts_at_one_instance() -> None:
    """IG with 32 steps: one instance per call from the start, never more than the bound."""
    assert ChunkSizer(512, start=32).current == 32
    assert ChunkSizer(512, start=4096).current == 512
    assert ChunkSizer(512, start=32, adaptive=False).current == 512


def cpu_executor() -> DeviceExecutor:
    """An executor whose batches bring their own work (no model is loaded)."""
    settings = BatchingSettings()
    return DeviceExecutor(
        torch.device("cpu"),
        Scheduler(settings),
        lambda *args: None,
        settings,  # type: ignore[arg-type,return-value]
    )


def test_the_executor_starts_each_group_at_its_rows_per_instance() -> None:
    executor = cpu_executor()
    ig = Group("ig", "m", "1", "integrated_gradients", print, print, rows_per_instance=32)
    saliency = Group("s", "m", "1", "saliency", print, print)
    assert executor._sizer(ig).current == 32
    assert executor._sizer(saliency).current == START_ROWS


def test_the_executor_reports_each_batch_to_its_sizer_and_logs_the_verdict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real batches through the executor: each model call costs the same whatever its rows (a
    fixed matrix product), so 16 rows a call are twice as fast per row as 8 and must win."""
    # Large enough (~2 ms a call) that a scheduler hiccup of a few ms on a shared machine cannot
    # undo a factor of two over the ~30 batches each size is judged on (at 192 × 192 one
    # failed: 8 rows 36 µs a row, 16 rows 51).
    work = torch.ones(384, 384)

    def run(
        model: object,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        seeds: torch.Tensor,
        chunk: int,
        measure: Measure,
    ) -> Attribution:
        def attribute(part: Batch) -> Attribution:
            for _ in range(4):
                torch.mm(work, work)
            return Attribution(part.inputs, part.inputs, part.targets, 1)

        return run_chunked(Batch(inputs, targets, seeds), 1, chunk, attribute, measure)

    executor = cpu_executor()
    group = Group("fixed", "m", "1", "saliency", run, lambda result, start, stop: None)
    loop = asyncio.new_event_loop()
    try:
        caplog.set_level(logging.INFO, logger="sidelight.batching.executor")
        for _ in range(2 * BATCHES_PER_SIZE + 2):
            request = Pending(
                group,
                torch.zeros(16, 2),
                torch.zeros(16, dtype=torch.int64),
                0,
                None,
                loop,
                loop.create_future(),
            )
            executor._run(TakenBatch(group, [request], [0.0]))
    finally:
        loop.close()
    assert executor.chunk_rows("fixed") in (16, 32)  # 16 kept: now 16 against 32
    verdicts = [r.getMessage() for r in caplog.records if "chunk sizing" in r.getMessage()]
    assert verdicts and verdicts[0].startswith("chunk sizing m/1 saliency: 8 rows")
    assert verdicts[0].endswith("keeps 16")


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
    assert climb(sizer, seconds) == [(16, 32, 16), (8, 16, 8)]
    assert (sizer.current, sizer.settled) == (8, True)


def test_from_a_large_start_a_tiny_model_goes_down_once_then_climbs() -> None:
    sizer = ChunkSizer(512, start=32)
    verdicts = climb(sizer, call_cost(overhead=1.0, per_row=0.0))
    assert [kept for _, _, kept in verdicts] == [32, 64, 128, 256, 512]
    assert verdicts[0][:2] == (16, 32)  # down once: halving 32 cost too much
    assert sizer.current == 512


def test_after_walking_down_it_does_not_climb_back_to_a_size_that_lost() -> None:
    """32 lost to 16 on the way down; when 16 then beats 8 the walk stops at 16."""
    sizer = ChunkSizer(512, start=32)
    verdicts = climb(sizer, per_row({32: 1.1, 16: 1.0, 8: 2.0}))
    assert verdicts == [(16, 32, 16), (8, 16, 16)]
    assert (sizer.current, sizer.settled) == (16, True)


def test_a_size_the_batches_never_fill_is_given_up_for_the_one_below() -> None:
    """Requests of one instance with 32 IG steps: batches of 32 rows can never judge 64."""
    seconds = call_cost(overhead=1.0, per_row=0.0)
    sizer = ChunkSizer(512, start=32)
    verdicts: list[tuple[int, int, int, float | None]] = []
    for _ in range(MAX_SMALL_BATCHES + BATCHES_PER_COMPARISON + 10):
        if sizer.settled:
            break
        verdict = batch(sizer, seconds, rows=32)
        if verdict is not None:
            verdicts.append((verdict.smaller, verdict.bigger, verdict.kept, verdict.bigger_per_row))
    assert verdicts[0][:3] == (16, 32, 32)
    assert verdicts[1] == (32, 64, 32, None)  # 64 was never filled
    assert (sizer.current, sizer.settled) == (32, True)


def test_a_spell_of_small_batches_does_not_end_a_comparison() -> None:
    """Callers arriving or leaving: batches too small to judge for a while, then big again."""
    sizer = ChunkSizer(16)
    cost = per_row({8: 1e-3, 16: 8e-4})  # short batches: 30 a size make a figure
    for _ in range(10):
        batch(sizer, cost, rows=16)
    for _ in range(3 * MIN_BATCHES_PER_SIZE + 5):  # what once counted as "never filled"
        assert batch(sizer, cost, rows=4) is None
    verdict = None
    while verdict is None:
        verdict = batch(sizer, cost, rows=16)
    assert verdict.kept == 16


def test_when_small_batches_are_the_rule_the_few_big_ones_decide() -> None:
    """Digits behind 32 callers: batches of 15 on average, one in ten fills 32 rows a call."""
    sizer = ChunkSizer(32)
    cost = per_row({8: 1e-4, 16: 8e-5, 32: 6e-5})  # short batches: 30 make a figure
    while sizer.comparing == (8, 16):
        batch(sizer, cost, rows=16)
    verdict = None
    index = 0
    while verdict is None:
        verdict = batch(sizer, cost, rows=24 if index % 10 < 2 else 12)
        index += 1
    # Ended by the 90 small batches (about the 113th batch), not by 30 big ones at each size
    # (the 300th).
    assert index < 150
    assert verdict.kept == 32 and verdict.bigger_per_row == pytest.approx(6e-5)


def test_a_batch_of_more_than_half_the_bigger_size_is_judged() -> None:
    """Batches of 10 fill a chunk of 16 (one call of 10) and run as 5 + 5 at a chunk of 8."""
    sizer = ChunkSizer(512)
    verdict = None
    while verdict is None:
        verdict = batch(sizer, per_row({8: 1.0, 16: 0.5}), rows=10)
    assert verdict is not None and verdict.smaller_per_row == 1.0 and verdict.kept == 16


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


def test_predict_batches_are_split_into_equal_parts_too() -> None:
    """The sizer judges sizes as if every batch ran in equal parts (`_fills`): Predict's calls
    must be split that way as well, 10 rows at 8 a call as 5 + 5, not 8 + 2."""
    weight = torch.randn(3, 4)
    model = SimpleNamespace(
        module=lambda x: x @ weight.T,
        probabilities=lambda outputs: torch.softmax(outputs, dim=1),
    )
    inputs = torch.randn(10, 4)
    calls: list[int] = []

    def measure(rows: int, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        calls.append(rows)
        return call()

    result = run_predict(
        model,  # type: ignore[arg-type]
        inputs,
        torch.full((10,), -1),
        torch.zeros(10, dtype=torch.int64),
        8,
        measure,
    )
    assert calls == [5, 5]
    expected = torch.softmax(inputs @ weight.T, dim=1)  # one call, computed here
    assert torch.allclose(torch.from_numpy(result.outputs), expected, atol=1e-6)
    assert result.targets.tolist() == expected.argmax(1).tolist()
