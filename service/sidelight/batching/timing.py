"""Timing each model call of a batch, on the device's own clock, for chunk sizing.

The chunk size is chosen from the time per row of *calls* of that size. Timing whole batches
instead mixes in what depends on the batch's size (one softmax, one copy back, Python per batch):
a large batch then looks cheaper per row whatever its chunk size, and since only batches that
fill a large chunk can judge it, the sizer drifted to chunk sizes that were slower (ResNet-18
Grad-CAM on 2 CPU cores: 57 inst/s at 32 rows per call against 80 at 8).

On a CPU the host clock times a call. On CUDA the calls are queued asynchronously, so a pair of
events brackets each one and the times are read only after the batch has come back to the host
(which synchronizes anyway): no host round-trip inside a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


class CallTimer:
    """Brackets calls with `measure`; `timings()` after the batch is done."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._device = device
        self._host: list[tuple[int, float]] = []
        self._events: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []

    def measure(self, rows: int, call: Callable[[], T]) -> T:
        if self._cuda:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record(torch.cuda.current_stream(self._device))
            result = call()
            end.record(torch.cuda.current_stream(self._device))
            self._events.append((rows, start, end))
            return result
        began = time.perf_counter()
        result = call()
        self._host.append((rows, time.perf_counter() - began))
        return result

    def timings(self) -> list[tuple[int, float]]:
        """(rows, seconds) of each call, in order. On CUDA, call after the batch synchronized."""
        if self._cuda:
            return [(rows, start.elapsed_time(end) / 1000.0) for rows, start, end in self._events]
        return list(self._host)
