"""Bounded device calls: one helper splits a batch so no model call exceeds `max_rows` rows.

Methods express their per-instance work and call `run_chunked`; the executor chooses
`max_rows` from what it measures (sidelight.batching.sizing). Keeping the split here, outside
the math, is what lets memory stay bounded for any batch size or number of steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from sidelight.methods.base import Attribution, Batch

T = TypeVar("T")


class Measure(Protocol):
    """Runs `call`, which puts `rows` rows through the model, and may time it."""

    def __call__(self, rows: int, call: Callable[[], T], /) -> T: ...


def unmeasured(rows: int, call: Callable[[], T], /) -> T:
    return call()


def instances_per_chunk(rows_per_instance: int, max_rows: int) -> int:
    """How many instances fit in one call of `max_rows` rows (at least one)."""
    return max(1, max_rows // max(1, rows_per_instance))


def run_chunked(
    batch: Batch,
    rows_per_instance: int,
    max_rows: int,
    attribute: Callable[[Batch], Attribution],
    measure: Measure = unmeasured,
) -> Attribution:
    """`attribute` on slices of `batch` of at most `max_rows` rows, results concatenated.
    `measure` sees each slice's call with its rows (the executor times them)."""
    step = instances_per_chunk(rows_per_instance, max_rows)
    if len(batch) <= step:
        return measure(len(batch) * rows_per_instance, lambda: attribute(batch))
    # Equal parts, not full chunks and a remainder: 10 instances at 8 per call run as 5 + 5,
    # since on a CPU a lone instance costs nearly what four do (ResNet-18 saliency: 19 inst/s
    # one at a time, 35 at batches of 8).
    parts = []
    for start, stop in equal_parts(len(batch), step):
        part = batch.slice(start, stop)
        parts.append(measure(len(part) * rows_per_instance, functools.partial(attribute, part)))
    return concatenate(parts)


def equal_parts(total: int, most: int) -> list[tuple[int, int]]:
    """[start, stop) of the fewest parts of at most `most` items, their sizes differing by <= 1."""
    count = -(-total // most)
    small, larger = divmod(total, count)
    bounds, start = [], 0
    for index in range(count):
        stop = start + small + (1 if index < larger else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def concatenate(parts: list[Attribution]) -> Attribution:
    def cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        present = [t for t in tensors if t is not None]
        return torch.cat(present) if present and len(present) == len(tensors) else None

    return Attribution(
        attributions=torch.cat([p.attributions for p in parts]),
        outputs=torch.cat([p.outputs for p in parts]),
        targets=torch.cat([p.targets for p in parts]),
        evaluations_per_instance=parts[0].evaluations_per_instance,
        completeness_error=cat([p.completeness_error for p in parts]),
        reference_gap=cat([p.reference_gap for p in parts]),
        stopped_by=next((p.stopped_by for p in parts if p.stopped_by), ""),
        local_fidelity=cat([p.local_fidelity for p in parts]),
    )
