"""Configuration (a), the limit: Captum called directly on the loaded module, in this process.

No server, no transport, no queue, no validation: the best throughput the method reaches on
this machine when someone hands it ready batches. Batch sizes 1, 2, 4, ... 64 are tried (and,
for Integrated Gradients, a few internal chunk sizes, which bound memory: rows per model call);
the best is the limit the service is compared with.

An expensive sweep (ResNet-18 IG: seconds per instance) stops at a time budget: before a point
is measured its cost is estimated from the best rate seen so far, and the sweep ends when the
budget would be exceeded. The report says where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerGradCam, Saliency
from sidelight.models.model import Model

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
IG_STEPS = 32
# Rows per model call tried for IG, per model: what bounds memory.
IG_CHUNKS = {"digits": (256, 512, 2048), "resnet18": (8, 16, 32, 64)}
DEFAULT_IG_CHUNKS = (32, 128, 512)

Attribute = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Point:
    batch: int
    chunk: int | None  # IG rows per model call; None for single-pass methods
    calls: int
    seconds: float

    @property
    def instances_per_s(self) -> float:
        return self.batch * self.calls / self.seconds


@dataclass(frozen=True)
class Limit:
    best: Point  # the sweep's best point: it chooses the batch size, not the figure
    points: list[Point]
    stopped_before: tuple[int, int | None] | None  # (batch, chunk) the budget did not reach
    # The best point measured again, for longer, before and after the servers' runs: the limit
    # is their mean. The best of several short noisy measurements overstates the rate (the
    # maximum of noise), and a shared machine drifts over the minutes the servers take.
    confirmations: tuple[Point, ...] = ()

    @property
    def instances_per_s(self) -> float:
        if not self.confirmations:
            return self.best.instances_per_s
        calls = sum(p.batch * p.calls for p in self.confirmations)
        return calls / sum(p.seconds for p in self.confirmations)


def attribute_fn(model: Model, method: str, chunk: int | None) -> Attribute:
    """(inputs, targets) -> attributions, by Captum as a user would call it, explicit targets."""
    module = model.module
    if method == "saliency":
        saliency = Saliency(module)
        return lambda x, t: saliency.attribute(_leaf(x), target=t, abs=True)
    if method == "grad_cam":
        if model.layer is None:
            raise ValueError(f"model {model.name!r} has no CAM layer")
        grad_cam = LayerGradCam(module, model.layer)
        return lambda x, t: _upsample(
            grad_cam.attribute(_leaf(x), target=t, relu_attributions=True), x
        )
    if method == "integrated_gradients":
        if chunk is None:
            raise ValueError("integrated_gradients needs a chunk size")
        return _ig_fn(model, chunk)
    raise ValueError(f"no in-process reference for method {method!r}")


def _ig_fn(model: Model, chunk: int) -> Attribute:
    """IG with at most `chunk` rows per model call. Captum's `internal_batch_size` spreads the
    steps of the whole batch over calls but never puts fewer than one step of every instance in
    a call, so a batch larger than the chunk is cut into slices first (as the service does)."""
    ig = IntegratedGradients(model.module)
    baseline = model.baseline().tensor

    def attribute(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = [
            ig.attribute(
                _leaf(xs),
                baselines=baseline,
                target=ts,
                n_steps=IG_STEPS,
                internal_batch_size=max(chunk, xs.shape[0]),
            )
            for xs, ts in zip(torch.split(x, chunk), torch.split(t, chunk), strict=True)
        ]
        return torch.cat(parts)

    return attribute


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _upsample(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Layer maps to the input's size, bilinear, as the service returns them."""
    return F.interpolate(maps, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


def batch_of(pool: torch.Tensor, targets: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """`size` instances from the pool, repeated when the pool is smaller."""
    rows = torch.arange(size) % pool.shape[0]
    return pool[rows].contiguous(), targets[rows].contiguous()


def time_point(
    attribute: Attribute, x: torch.Tensor, t: torch.Tensor, min_time_s: float, warm: bool
) -> tuple[int, float]:
    """(calls, seconds): calls repeated until `min_time_s` has passed, one at least. `warm`
    runs one untimed call first (first calls at a new size pay for allocation)."""
    if warm:
        attribute(x, t)
    calls, started = 0, time.perf_counter()
    while True:
        attribute(x, t)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_time_s:
            return calls, elapsed


def chunks_for(model: str, method: str, batch: int) -> list[int | None]:
    """The chunk sizes worth trying at this batch size (larger than the batch's rows is the
    same as the batch's rows)."""
    if method != "integrated_gradients":
        return [None]
    rows = batch * IG_STEPS
    return sorted({min(c, rows) for c in IG_CHUNKS.get(model, DEFAULT_IG_CHUNKS)})


def grid(model: str, method: str, sizes: Iterable[int]) -> list[tuple[int, int | None]]:
    return [(b, c) for b in sizes for c in chunks_for(model, method, b)]


def sweep(
    model: Model,
    method: str,
    pool: torch.Tensor,
    targets: torch.Tensor,
    *,
    min_time_s: float,
    budget_s: float,
    sizes: Sequence[int] = BATCH_SIZES,
) -> Limit:
    """Measure each (batch, chunk) of the grid until the time budget would be exceeded."""
    points: list[Point] = []
    started = time.perf_counter()
    stopped: tuple[int, int | None] | None = None
    first = True
    for batch, chunk in grid(model.name, method, sizes):
        estimate = _estimate(points, batch, min_time_s)
        if points and time.perf_counter() - started + estimate > budget_s:
            stopped = (batch, chunk)
            break
        x, t = batch_of(pool, targets, batch)
        attribute = attribute_fn(model, method, chunk)
        warm = first or estimate <= min_time_s
        calls, seconds = time_point(attribute, x, t, min_time_s, warm)
        points.append(Point(batch, chunk, calls, seconds))
        first = False
    best = max(points, key=lambda p: p.instances_per_s)
    return Limit(best, points, stopped)


def confirm(
    model: Model,
    method: str,
    pool: torch.Tensor,
    targets: torch.Tensor,
    point: Point,
    *,
    min_time_s: float,
) -> Point:
    """Measure `point`'s batch and chunk again, for at least `min_time_s` (one call at least)."""
    x, t = batch_of(pool, targets, point.batch)
    calls, seconds = time_point(
        attribute_fn(model, method, point.chunk), x, t, min_time_s, warm=True
    )
    return Point(point.batch, point.chunk, calls, seconds)


def _estimate(points: Sequence[Point], batch: int, min_time_s: float) -> float:
    """Seconds the next point will take, from the best rate seen: one call at least."""
    if not points:
        return 0.0
    rate = max(p.instances_per_s for p in points)
    return max(min_time_s, batch / rate)
