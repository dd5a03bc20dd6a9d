"""How many rows to put through the model per call, chosen from what the executor measures.

On a GPU, bigger calls are nearly always faster per row, up to memory; on a CPU, a large model
gains little past a few rows while a tiny one gains all the way. Rather than guess, each
(model, method, params, shape) group climbs from a small size: it doubles the chunk while the
measured time per row improves by at least `gain`, and settles on the best size it saw. It
never tries a size larger than the bound, so memory stays bounded; it starts small, so a large
model never pays for a huge call that would not have helped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# A size is judged on the median time per row of this many full calls (see `_fills`), after its
# first calls, which pay for new shapes (allocations, oneDNN or cuDNN plans), are left out.
# On a shared machine one call's time varies by 10-15%: the median of several, not one figure,
# decides.
WARMUP_CALLS = 1
SAMPLES_PER_SIZE = 7
START_ROWS = 8
# Doubling must cut the median time per row by at least this fraction to be kept.
GAIN = 0.05


# A size whose calls stay partial this many times in a row (the batches never fill it) is given
# up for the size below, which was measured.
MAX_PARTIAL_CALLS = 3 * SAMPLES_PER_SIZE


@dataclass
class _Measured:
    warmup_left: int = WARMUP_CALLS
    per_row: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.per_row)


def _fills(rows: int, chunk: int) -> bool:
    """Whether a call of `rows` rows speaks for a chunk of `chunk` rows. Batches larger than a
    chunk are split into equal parts (sidelight.methods.chunking): at a chunk of 8, a batch of
    10 runs as 5 + 5, so any call of more than half a chunk is one this size produces."""
    return 2 * rows > chunk


def _pays(bigger: _Measured, smaller: _Measured) -> bool:
    """Whether the bigger size cuts the time per row enough to be worth its memory."""
    return bigger.median <= (1 - GAIN) * smaller.median


@dataclass
class ChunkSizer:
    """The chunk size for one group. Not thread-safe: one executor thread owns it.

    From the start size it first walks down while halving costs less than GAIN (on a CPU a big
    model runs fastest in small calls: ResNet-18 IG, 0.9 inst/s at 16 rows per call, 0.7 at
    64), then up while doubling pays, and settles."""

    bound: int
    adaptive: bool = True
    # Where the walk starts: a group whose instance costs many rows (IG's steps) starts at one
    # whole instance per call.
    start: int = START_ROWS
    current: int = field(init=False)
    settled: bool = field(init=False, default=False)
    _seen: dict[int, _Measured] = field(init=False, default_factory=dict)
    _floor: int = field(init=False)
    _going_down: bool = field(init=False)
    _partial_calls: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.current = min(max(self.start, 1), self.bound) if self.adaptive else self.bound
        self.settled = not self.adaptive
        self._floor = min(START_ROWS, self.current)
        self._going_down = self.current // 2 >= self._floor

    def record(self, rows: int, seconds: float) -> None:
        """One model call (or one slice of a batch) ran `rows` rows in `seconds`."""
        if self.settled or seconds <= 0:
            return
        if not _fills(rows, self.current):  # a partial call says nothing about the size
            self._partial_calls += 1
            if self._partial_calls >= MAX_PARTIAL_CALLS and self.current // 2 in self._seen:
                self.current //= 2  # the batches never fill this size
                self.settled = True
            return
        self._partial_calls = 0
        seen = self._seen.setdefault(self.current, _Measured())
        if seen.warmup_left > 0:
            seen.warmup_left -= 1
            return
        seen.per_row.append(seconds / rows)
        if len(seen.per_row) >= SAMPLES_PER_SIZE:
            self._step()

    def _move(self, size: int) -> None:
        self.current = size
        self._partial_calls = 0

    def _step(self) -> None:
        here = self._seen[self.current]
        if self._going_down:
            above = self._seen.get(self.current * 2)
            if above is not None and _pays(above, here):
                self._going_down = False  # halving cost too much: climb from the size above
                self._move(self.current * 2)
                self._climb_from_here()
            elif self.current // 2 >= self._floor:
                self._move(self.current // 2)
            else:
                self.settled = True
            return
        below = self._seen.get(self.current // 2)
        if below is not None and not _pays(here, below):
            self._move(self.current // 2)  # doubling did not pay: go back and stay
            self.settled = True
        else:
            self._climb_from_here()

    def _climb_from_here(self) -> None:
        up = self.current * 2
        if up <= self.bound and up not in self._seen:
            self._move(up)
        else:
            self.settled = True
