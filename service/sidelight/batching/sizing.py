"""How many rows to put through the model per call, chosen from what the executor measures.

On a GPU, bigger calls are nearly always faster per row, up to memory; on a CPU, a large model
gains little past a few rows while a tiny one gains all the way. Rather than guess, each
(model, method, params, shape) group compares sizes two at a time and keeps the faster per
row: from a large start it first halves while the half is faster, then doubles while the double
is faster, and settles. It never tries a size larger than the bound, so memory stays bounded;
it starts small, so a large model never pays for a huge call that would not help.

Three things keep the comparison fair in a loaded server, where audited digits servers once
judged 16-row Grad-CAM calls slower per row than 8-row calls in three runs of three (905 against
578 µs) when in-process they are faster (181 against 269):
- the two sizes run in alternate batches, not one after the other, so both meet the same load
  (the event loop sharing the GIL, audit writes, neighbours on the machine change over seconds);
- both are judged on the same batches, those that fill the bigger size (see `_fills`);
- the first call at each number of rows is left out: it pays for the new shape (`_warm`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# A size is judged on its time per row over all the batches run at it: total seconds over total
# rows, which is what throughput follows (a median would ignore the slow tail that a bigger size
# shortens: fewer calls, fewer waits for the GIL). One batch's time varies a lot in a loaded
# server (digits behind 32 callers and an audit log: a coefficient of variation of 0.6), so a
# size needs many batches. Batch timings logged from 12 such servers (sizes 8, 16 and 32 in
# turn), replayed from every half second of their first 8: where the bigger size was faster over
# the whole run, the median of 7 batches (the rule before) kept the smaller in 104 comparisons
# of 368; the total over 30 batches (or a second of calls), in 24 of 335. A large model's batch
# lasts long enough to average its own noise: a second of calls suffices, after at least 7.
MIN_BATCHES_PER_SIZE = 7
BATCHES_PER_SIZE = 30
SECONDS_PER_SIZE = 1.0
# ...but a batch of many long calls is a figure by itself. ResNet-18 Integrated Gradients (32
# steps) behind 32 callers runs batches of ~14 instances lasting ~25 s, and its sizes differ
# by 15-40% (8 and 16 rows a call against 32 and 64): at 7 batches a size, each comparison
# took six minutes, half of them at the slower size, and the benchmark's window ended before
# the walk did. So a size whose batches last this long on average is judged on any number.
SECONDS_ALONE = 10.0
START_ROWS = 8


# When this many batches of a comparison were too small to fill the bigger size, the batches
# seldom fill it, and then mostly run alike at both sizes: the comparison ends on the batches
# that did fill it, or for the smaller if they were too few.
# Counted in all, not in a row: a few seconds of small batches (callers arriving) in a run of
# big ones once ended a comparison that the bigger size was winning (753 against 824 µs a row).
MAX_SMALL_BATCHES = 3 * BATCHES_PER_SIZE


@dataclass
class _Arm:
    """One size of a comparison and what its batches measured."""

    rows: int
    batches: int = 0
    rows_timed: int = 0
    seconds: float = 0.0

    def add(self, calls: list[tuple[int, float]]) -> None:
        """One batch's (warm) calls at this size."""
        rows = sum(rows for rows, _ in calls)
        if rows:
            self.batches += 1
            self.rows_timed += rows
            self.seconds += sum(seconds for _, seconds in calls)

    @property
    def judged(self) -> bool:
        if self.batches and self.seconds >= SECONDS_ALONE * self.batches:
            return True
        return self.batches >= MIN_BATCHES_PER_SIZE and (
            self.batches >= BATCHES_PER_SIZE or self.seconds >= SECONDS_PER_SIZE
        )

    @property
    def seconds_per_row(self) -> float:
        return self.seconds / self.rows_timed if self.rows_timed else float("inf")


def _faster(bigger: _Arm, smaller: _Arm) -> bool:
    """Whether the bigger size is at least as fast per row. A tie goes to the bigger: asking it
    to save a margin (it was 5%) turned noise into a bias for the smaller, and the bound keeps
    memory bounded anyway."""
    return bigger.seconds_per_row <= smaller.seconds_per_row


@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison, for the executor's log."""

    smaller: int
    bigger: int
    smaller_per_row: float | None  # seconds per row; None: no batch filled the bigger size
    bigger_per_row: float | None
    kept: int


def _fills(rows: int, chunk: int) -> bool:
    """Whether a batch of `rows` rows fills a chunk of `chunk` rows. Batches larger than a
    chunk are split into equal parts (sidelight.methods.chunking): at a chunk of 8, a batch of
    10 runs as 5 + 5, so any batch of more than half a chunk runs as calls of that size.

    Both sizes of a comparison are judged only on batches that fill the bigger one. Batch sizes
    follow the load (a queue builds up while the event loop and the audit log hold the GIL), so
    judging each size on the batches that fill it would judge the bigger size on the more
    contended moments."""
    return 2 * rows > chunk


@dataclass
class ChunkSizer:
    """The chunk size for one group. Not thread-safe: one executor thread owns it.

    The executor runs each batch at `current` and then reports its calls with `record_batch`;
    while a comparison runs, `current` alternates between its two sizes."""

    bound: int
    adaptive: bool = True
    # Where the walk starts: a group whose instance costs many rows (IG's steps) starts at one
    # whole instance per call.
    start: int = START_ROWS
    current: int = field(init=False)
    settled: bool = field(init=False, default=False)
    _keeper: int = field(init=False)  # the size the walk holds so far
    _arms: tuple[_Arm, _Arm] = field(init=False)  # (smaller, bigger), while comparing
    _shapes_seen: set[int] = field(init=False, default_factory=set)  # rows of calls timed
    _small_batches: int = field(init=False, default=0)  # see MAX_SMALL_BATCHES
    _start_rows: int = field(init=False)
    _going_down: bool = field(init=False)
    _floor: int = field(init=False)

    def __post_init__(self) -> None:
        self._keeper = min(max(self.start, 1), self.bound) if self.adaptive else self.bound
        self._start_rows = self._keeper
        self.current = self._keeper
        self.settled = not self.adaptive
        self._floor = min(START_ROWS, self._keeper)
        self._going_down = self._keeper // 2 >= self._floor
        if self.settled:
            return
        if self._going_down:
            self._compare(self._keeper // 2, self._keeper)
        else:
            self._climb()

    @property
    def comparing(self) -> tuple[int, int] | None:
        """The (smaller, bigger) sizes being compared, or None once settled."""
        return None if self.settled else (self._arms[0].rows, self._arms[1].rows)

    def record_batch(self, chunk: int, calls: Iterable[tuple[int, float]]) -> Verdict | None:
        """A batch ran at `chunk` rows per call; `calls` are its (rows, seconds), one per model
        call. Returns the verdict when this batch ended a comparison."""
        if self.settled or chunk not in (self._arms[0].rows, self._arms[1].rows):
            return None
        arm = self._arms[0] if chunk == self._arms[0].rows else self._arms[1]
        smaller, bigger = self._arms
        calls = list(calls)
        warm = self._warm(calls)  # every batch's calls warm their shapes, judged or not
        if _fills(sum(rows for rows, _ in calls), bigger.rows):
            arm.add(warm)
        else:  # a batch too small to fill the bigger size runs alike at both: it judges neither
            self._small_batches += 1
            if self._small_batches >= MAX_SMALL_BATCHES:  # and such batches are the rule
                # The few batches that filled the bigger size still say which serves them
                # better, if there were enough of them at both sizes.
                enough = min(smaller.batches, bigger.batches) >= MIN_BATCHES_PER_SIZE
                return self._decide(keep_bigger=enough and _faster(bigger, smaller))
        if smaller.judged and bigger.judged:
            return self._decide(keep_bigger=_faster(bigger, smaller))
        # The next batch runs the other size, unless that one is already judged.
        other = bigger if arm is smaller else smaller
        self.current = arm.rows if other.judged else other.rows
        return None

    def _warm(self, calls: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The calls that measure the size: not the first call at each number of rows, which
        pays for a new shape (oneDNN primitives or cuDNN plans, allocations). Digits Grad-CAM on
        a CPU: 10-30 ms for the first call of 9 to 16 rows, 2-3 ms for the next. Batches come in
        every size, so a size's first calls are mostly new shapes: counted, they made 16 rows a
        call look slower per row than 8."""
        warm = []
        for rows, seconds in calls:
            if seconds <= 0:  # a clock that did not move
                continue
            if rows in self._shapes_seen:
                warm.append((rows, seconds))
            else:
                self._shapes_seen.add(rows)
        return warm

    def _compare(self, smaller: int, bigger: int) -> None:
        self._arms = (_Arm(smaller), _Arm(bigger))
        self._small_batches = 0
        self.current = self._keeper  # the held size runs first

    def _decide(self, *, keep_bigger: bool) -> Verdict:
        smaller, bigger = self._arms
        verdict = Verdict(
            smaller.rows,
            bigger.rows,
            smaller.seconds_per_row if smaller.rows_timed else None,
            bigger.seconds_per_row if bigger.rows_timed else None,
            bigger.rows if keep_bigger else smaller.rows,
        )
        self._keeper = verdict.kept
        if self._going_down and not keep_bigger:  # the half is faster: go on down
            if self._keeper // 2 >= self._floor:
                self._compare(self._keeper // 2, self._keeper)
            else:
                self._settle()
        elif self._going_down and bigger.rows == self._start_rows:
            self._going_down = False  # the start beat its half: climb from it
            self._climb()
        elif self._going_down:
            self._settle()  # the bigger already beat the size above it on the way down
        elif keep_bigger:
            self._climb()
        else:
            self._settle()  # the double is slower: stay
        return verdict

    def _climb(self) -> None:
        if self._keeper * 2 <= self.bound:
            self._compare(self._keeper, self._keeper * 2)
        else:
            self._settle()

    def _settle(self) -> None:
        self.current = self._keeper
        self.settled = True
