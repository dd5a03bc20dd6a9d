"""How many rows to put through the model per call, chosen from what the executor measures.

On a GPU, bigger calls are nearly always faster per row, up to memory; on a CPU, a large model
gains little past a few rows while a tiny one gains all the way. Rather than guess, each
(model, method, params, shape) group climbs from a small size: it doubles the chunk while the
measured time per row improves by at least `gain`, and settles on the best size it saw. It
never tries a size larger than the bound, so memory stays bounded; it starts small, so a large
model never pays for a huge call that would not have helped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A size is judged on this many full calls (a call is full when it had rows to fill it).
SAMPLES_PER_SIZE = 3
START_ROWS = 8
# Doubling must cut the time per row by at least this fraction to be kept.
GAIN = 0.05
# Each measurement is blended into the size's running figure with this weight.
SMOOTHING = 0.3


@dataclass
class _Measured:
    seconds_per_row: float
    samples: int


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
        """One batch ran `rows` rows in chunks of `self.current` and took `seconds`."""
        if self.settled or rows < self.current or seconds <= 0:
            return  # a partial call says nothing about the size
        per_row = seconds / rows
        seen = self._seen.get(self.current)
        if seen is None:
            self._seen[self.current] = _Measured(per_row, 1)
        else:
            seen.seconds_per_row += SMOOTHING * (per_row - seen.seconds_per_row)
            seen.samples += 1
        if self._seen[self.current].samples >= SAMPLES_PER_SIZE:
            self._step()

    def _step(self) -> None:
        smaller = self._seen.get(self.current // 2)
        here = self._seen[self.current]
        if smaller is not None and here.seconds_per_row > (1 - GAIN) * smaller.seconds_per_row:
            self.current //= 2  # doubling did not pay: go back and stay
            self.settled = True
        elif self.current * 2 <= self.bound:
            self.current *= 2
        else:
            self.settled = True
