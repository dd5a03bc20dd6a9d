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

# A size is judged on the median time per row of this many full calls (a call is full when it
# had at least a chunk's rows), after its first calls, which pay for new shapes (allocations,
# oneDNN or cuDNN plans), are left out. On a shared machine one call's time varies by 10-15%:
# the median of several, not one figure, decides.
WARMUP_CALLS = 1
SAMPLES_PER_SIZE = 7
START_ROWS = 8
# Doubling must cut the median time per row by at least this fraction to be kept.
GAIN = 0.05


@dataclass
class _Measured:
    warmup_left: int = WARMUP_CALLS
    per_row: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.per_row)


@dataclass
class ChunkSizer:
    """The chunk size for one group. Not thread-safe: one executor thread owns it."""

    bound: int
    adaptive: bool = True
    # Where the climb starts: a group whose instance costs many rows (IG's steps) starts at one
    # whole instance per call, which no device runs slower than a fraction of one.
    start: int = START_ROWS
    current: int = field(init=False)
    settled: bool = field(init=False, default=False)
    _seen: dict[int, _Measured] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.current = min(max(self.start, 1), self.bound) if self.adaptive else self.bound
        self.settled = not self.adaptive

    def record(self, rows: int, seconds: float) -> None:
        """One model call (or one slice of a batch) ran `rows` rows in `seconds`."""
        if self.settled or rows < self.current or seconds <= 0:
            return  # a partial call says nothing about the size
        seen = self._seen.setdefault(self.current, _Measured())
        if seen.warmup_left > 0:
            seen.warmup_left -= 1
            return
        seen.per_row.append(seconds / rows)
        if len(seen.per_row) >= SAMPLES_PER_SIZE:
            self._step()

    def _step(self) -> None:
        smaller = self._seen.get(self.current // 2)
        here = self._seen[self.current]
        if smaller is not None and here.median > (1 - GAIN) * smaller.median:
            self.current //= 2  # doubling did not pay: go back and stay
            self.settled = True
        elif self.current * 2 <= self.bound:
            self.current *= 2
        else:
            self.settled = True
