"""Configuration (a), the limit: Captum called directly on the loaded module, in this process.

No server, no transport, no queue, no validation: the best throughput the method reaches on
this machine when someone hands it ready batches. Batch sizes 1, 2, 4, ... 64 are tried (and,
for Integrated Gradients, a few internal chunk sizes, which bound memory: rows per model call),
each as one stream of batches on all of torch's threads and as two streams at once (two
threads, each with its own copy of the module and half the threads: what the server's two CPU
lanes do, sidelight.batching.lanes); the best is the limit the service is compared with.

An expensive sweep (ResNet-18 IG: seconds per instance) stops at a time budget: before a point
is measured its cost is estimated from the best rate seen so far, and the sweep ends when the
budget would be exceeded. The report says where it stopped.
"""

from __future__ import annotations

import threading
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
# Batches computed at once, each on its own thread with an even share of torch's threads.
STREAMS = (1, 2)

Attribute = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Point:
    batch: int
    chunk: int | None  # IG rows per model call; None for single-pass methods
    calls: int  # over all streams
    seconds: float
    streams: int = 1

    @property
    def instances_per_s(self) -> float:
        return self.batch * self.calls / self.seconds


@dataclass(frozen=True)
class Limit:
    best: Point  # the sweep's best point: it chooses the batch size, not the figure
    points: list[Point]
    stopped_before: tuple[int, int | None, int] | None  # (batch, chunk, streams) not reached
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


def time_streams(
    attributes: Sequence[Attribute],
    x: torch.Tensor,
    t: torch.Tensor,
    min_time_s: float,
    warm: bool,
) -> tuple[int, float]:
    """`time_point` with one stream per attribute function, each on its own thread with an
    even share of torch's threads, all started together: (calls of all, seconds until the
    last stream's last call ended). One function: on this thread, as it is."""
    if len(attributes) == 1:
        return time_point(attributes[0], x, t, min_time_s, warm)
    threads = max(1, torch.get_num_threads() // len(attributes))
    counts = [0] * len(attributes)
    failures: list[BaseException] = []
    start: list[float] = []  # set once, as every stream is ready
    ready = threading.Barrier(len(attributes), action=lambda: start.append(time.perf_counter()))

    def stream(index: int, attribute: Attribute) -> None:
        try:
            torch.get_num_threads()  # torch's lazy first setting, so it cannot undo ours
            torch.set_num_threads(threads)  # this thread's own (see sidelight's executor)
            xs = x.clone()  # each stream its own input, as each lane has its own batches
            if warm:
                attribute(xs, t)
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            ready.wait()
        try:
            while True:
                attribute(xs, t)
                counts[index] += 1
                if time.perf_counter() - start[0] >= min_time_s:
                    return
        except BaseException as exc:
            failures.append(exc)
            raise

    workers = [
        threading.Thread(target=stream, args=(i, a), daemon=True) for i, a in enumerate(attributes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start[0]
    if failures:
        raise RuntimeError("a stream failed") from failures[0]
    return sum(counts), elapsed


def stream_models(model: Model, streams: int) -> list[Model]:
    """The model once per stream: the module itself, then copies (methods hook the module
    while they run, so two threads may not share one)."""
    return [model] + [model.private_copy() for _ in range(streams - 1)]


def chunks_for(model: str, method: str, batch: int) -> list[int | None]:
    """The chunk sizes worth trying at this batch size (larger than the batch's rows is the
    same as the batch's rows)."""
    if method != "integrated_gradients":
        return [None]
    rows = batch * IG_STEPS
    return sorted({min(c, rows) for c in IG_CHUNKS.get(model, DEFAULT_IG_CHUNKS)})


def grid(
    model: str, method: str, sizes: Iterable[int], streams: Iterable[int] = STREAMS
) -> list[tuple[int, int | None, int]]:
    return [(b, c, s) for b in sizes for c in chunks_for(model, method, b) for s in streams]


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
    """Measure each (batch, chunk, streams) of the grid until the time budget would be
    exceeded."""
    points: list[Point] = []
    started = time.perf_counter()
    stopped: tuple[int, int | None, int] | None = None
    first = True
    copies = stream_models(model, max(STREAMS))
    for batch, chunk, streams in grid(model.name, method, sizes):
        estimate = _estimate(points, batch, min_time_s)
        if points and time.perf_counter() - started + estimate > budget_s:
            stopped = (batch, chunk, streams)
            break
        x, t = batch_of(pool, targets, batch)
        attributes = [attribute_fn(m, method, chunk) for m in copies[:streams]]
        warm = first or estimate <= min_time_s
        calls, seconds = time_streams(attributes, x, t, min_time_s, warm)
        points.append(Point(batch, chunk, calls, seconds, streams))
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
    """Measure `point` (batch, chunk, streams) again, for at least `min_time_s` (one call of
    each stream at least)."""
    x, t = batch_of(pool, targets, point.batch)
    attributes = [attribute_fn(m, method, point.chunk) for m in stream_models(model, point.streams)]
    calls, seconds = time_streams(attributes, x, t, min_time_s, warm=True)
    return Point(point.batch, point.chunk, calls, seconds, point.streams)


def _estimate(points: Sequence[Point], batch: int, min_time_s: float) -> float:
    """Seconds the next point will take, from the best rate seen: one call at least."""
    if not points:
        return 0.0
    rate = max(p.instances_per_s for p in points)
    return max(min_time_s, batch / rate)
