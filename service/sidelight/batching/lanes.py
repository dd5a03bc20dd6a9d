"""How many executors (lanes) a device runs, and how many threads each gets.

One executor thread on a CPU leaves cores idle whenever it is not inside a kernel: while it
runs Python (the method, Captum, the autograd engine's bookkeeping, splitting results), while
it waits for the GIL the gRPC loop holds, and while it waits for its next batch — the closed
loop of answers out and requests in. A second lane, with its own copy of the models and half
the threads, computes in those gaps; each kernel also scales better on one thread than on two.
ResNet-18 Grad-CAM on 2 cores, in one process, fresh inputs, 3 interleaved rounds: one stream
of 8 or 16 rows on 2 threads 29-30 inst/s, two streams of 4-16 rows on 1 thread each 36
(docs/benchmarks.md). This is Triton's `instance_group { count: 2, kind: KIND_CPU }`, made
the default.

A second lane pays only where model calls are long. Where they last a millisecond (the 8×8
digits), the executor's time is Python, the lanes and the gRPC loop queue for the GIL, and
batches split between lanes are smaller: digits Grad-CAM behind 32 callers answered 689 inst/s
with two lanes against 837 with one (3 interleaved rounds). So the first lane takes every
group, and the others only groups whose calls last HEAVY_CALL_S on average (by default; the
executors mark them after each batch, `Scheduler.mark_heavy`).

Nor where an instance is many rows (Integrated Gradients' steps, SmoothGrad's samples): its
calls are already large enough to keep the threads busy, and two lanes hold two such calls'
activations at once. ResNet-18 IG (32 steps) behind 32 callers with two lanes took 92,000 minor
page faults a second and answered 0.29 inst/s, against 0.49 for the same server one request at
a time (2026-12-01). Such groups stay on the first lane.

A lane that runs alone takes every thread (`LaneOverlap`); while lanes overlap, each computes
on its share. "Alone" means that no other lane runs now and none ran beside another in the last
OVERLAP_QUIET_S: under load the lanes overlap all the time and keep their shares, rather than
one lane taking every thread in the moment between two of the other's batches and then
oversubscribing the cores when the other starts beside it. ResNet-18 on 2 cores, servers side
by side, 3 interleaved rounds (2026-12-02): one caller at a time, p50 172-180 ms (saliency) and
84-108 ms (Grad-CAM) with fixed halves, 125-143 and 70-76 ms with this rule; behind 32 callers
no loss (saliency 34.2 against 33.2 inst/s over the rounds, Grad-CAM 70.6 against 68.5). Without
the quiet time (alone whenever the other lane is idle at this batch's start) saliency behind
32 callers lost 8%, and every lane on every thread always lost 9% (docs/benchmarks.md).
Groups only the first lane takes need it most: on half the threads ResNet-18 IG one request at
a time answered 0.24 inst/s where one lane had answered 0.6 (2026-12-01).

A CUDA device runs one lane: its kernels queue on one stream, and the host work a second lane
would overlap is already asynchronous to the device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# Lanes per CPU device when the settings leave it open (and the device has the threads).
DEFAULT_CPU_LANES = 2
# Mean seconds per model call from which a group is heavy, by default
# (BatchingSettings.extra_lane_min_call_ms): 20 GIL switch intervals (1 ms,
# ServerSettings.gil_switch_interval_s), so that waiting for the GIL is a small share of a call.
HEAVY_CALL_S = 0.020
# Seconds after two lanes last ran at once before a lane starting a batch counts as alone.
OVERLAP_QUIET_S = 1.0


@dataclass(frozen=True)
class Lane:
    index: int
    threads: int | None  # intra-op threads for the lane's thread; None: leave torch's setting
    # Of several lanes: its threads while it runs alone (all of them; LaneOverlap).
    alone_threads: int | None = None


def lanes_for(device: torch.device, cpu_lanes: int | None, cpu_threads: int) -> list[Lane]:
    """The lanes of `device`. `cpu_lanes` None: DEFAULT_CPU_LANES where `cpu_threads` (the
    process's intra-op threads) allow one thread each, else one. The threads are split evenly;
    a remainder goes to the first lanes; a lane alone takes them all."""
    if device.type != "cpu":
        return [Lane(0, None)]
    count = min(DEFAULT_CPU_LANES, cpu_threads) if cpu_lanes is None else cpu_lanes
    count = max(1, count)
    if count == 1:
        return [Lane(0, None)]
    share, extra = divmod(max(cpu_threads, count), count)
    return [Lane(index, share + (1 if index < extra else 0), cpu_threads) for index in range(count)]


def is_heavy(
    calls: Sequence[tuple[int, float]], min_call_s: float = HEAVY_CALL_S, rows_per_instance: int = 1
) -> bool:
    """Whether lanes after the first may take a group: its instances are one row each, and a
    batch's model calls, (rows, seconds) each, last `min_call_s` on average."""
    if rows_per_instance != 1 or not calls:
        return False
    return sum(seconds for _, seconds in calls) >= min_call_s * len(calls)


class LaneOverlap:
    """Whether a lane of a device starts its batch alone: no other lane runs one now, and none
    ran beside another in the last `quiet_s`. Each lane calls `begin` before a batch and `end`
    after it."""

    def __init__(
        self, quiet_s: float = OVERLAP_QUIET_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._overlapped_at = float("-inf")  # the last moment two lanes were known to run at once

    def begin(self) -> bool:
        """A batch starts; whether it starts alone."""
        with self._lock:
            now = self._clock()
            if self._running:
                self._overlapped_at = now
            self._running += 1
            return now - self._overlapped_at >= self._quiet_s

    def end(self) -> None:
        with self._lock:
            if self._running > 1:
                self._overlapped_at = self._clock()
            self._running -= 1
