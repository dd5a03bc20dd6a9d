"""Faithfulness sampled on live traffic, off the hot path.

After an explanation is answered, the data plane offers it here; a configurable fraction is
kept (a random draw per request) and put on a bounded queue that one background thread drains:
it scores the explanation with the deletion and insertion curves and their random baselines
(sidelight.quality.curves) and records them in Prometheus. Nothing of this runs inside the
request: an offer is a random draw and, when kept, a put that never blocks (a full queue drops
the sample and counts it).

The scoring yields to requests. Each of its model calls (one curve of one sample, a few
batched forward passes) starts only after the device has been idle, no request queued or
being computed (`idle_for`), for `quiet_s` on end: closed-loop callers leave the device idle for
the instant between an answer and their next request, and a sampler that jumped into that
instant took 19% of a saturated server's throughput (bench/sampling_overhead.py). A sample that
finds no such gap within `max_wait_s` is dropped and counted
(`sidelight_faithfulness_dropped_total{reason="busy"}`), so a saturated server keeps its
throughput and says how much it could not score.

While it waits, the sampler looks at the device every `poll_s` (50 ms), not more often: each
look takes the GIL, and a thread that wakes every 2 ms made the executor and the event loop
hand the GIL over hundreds of times a second (CPython's convoy effect): Integrated Gradients
under 32 callers lost 65% of its throughput to a sampler that scored nothing.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from sidelight.metrics import Metrics
from sidelight.models.model import Model, PrivateModels
from sidelight.quality.curves import Curve, Reference, curve, element_scores, random_curve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Sample:
    model: Model
    method: str
    inputs: torch.Tensor  # N x input shape, CPU
    attributions: npt.NDArray[np.float32]
    targets: npt.NDArray[np.int64]
    explanation_id: str


@dataclass(frozen=True)
class SampledScores:
    """What the sampler measured for one explanation (per instance), for whoever keeps it
    beside the explanation (the audit log)."""

    explanation_id: str
    model: Model
    method: str
    reference: str
    steps: int
    areas: dict[str, list[float]]  # "deletion_auc", "insertion_auc", "random_deletion_auc", ...


class FaithfulnessSampler:
    def __init__(
        self,
        metrics: Metrics,
        fraction: float,
        *,
        steps: int = 16,
        max_pending: int = 64,
        max_rows: int = 4096,
        seed: int | None = None,
        idle_for: Callable[[], float] = lambda: float("inf"),
        max_wait_s: float = 5.0,
        quiet_s: float = 0.02,
        poll_s: float = 0.05,
        on_scored: Callable[[SampledScores], None] = lambda scores: None,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("the faithfulness sample fraction must be in [0, 1]")
        self.fraction = fraction
        self._metrics = metrics
        self._steps = steps
        self._max_rows = max_rows
        self._draw = random.Random(seed)
        self._idle_for = idle_for
        self._poll_s = poll_s
        self._max_wait_s = max_wait_s
        self._quiet_s = quiet_s
        self._on_scored = on_scored
        self._queue: queue.Queue[_Sample | None] = queue.Queue(max_pending)
        self._own = PrivateModels()  # never the executor's module (see Model.private_copy)
        self._thread = threading.Thread(target=self._run, name="faithfulness", daemon=True)
        self._thread.start()

    def offer(
        self,
        model: Model,
        method: str,
        inputs: torch.Tensor,
        attributions: npt.NDArray[np.float32],
        targets: npt.NDArray[np.int64],
        explanation_id: str = "",
    ) -> bool:
        """Keep this explanation for scoring with probability `fraction`; never blocks."""
        if self.fraction <= 0.0 or self._draw.random() >= self.fraction:
            return False
        sample = _Sample(model, method, inputs, attributions, targets, explanation_id)
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self._metrics.faithfulness_dropped.labels(model.name, method, "full").inc()
            return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def join(self) -> None:
        """Wait until everything offered so far is scored (for tests and shutdown)."""
        self._queue.join()

    def _run(self) -> None:
        while (sample := self._queue.get()) is not None:
            try:
                if not self._score(sample):
                    labels = (sample.model.name, sample.method, "busy")
                    self._metrics.faithfulness_dropped.labels(*labels).inc()
            except Exception:  # a sample that cannot be scored must not stop the sampler
                log.exception(
                    "faithfulness scoring of %s/%s failed", sample.model.name, sample.method
                )
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _wait_for_a_gap(self) -> bool:
        """Until the device has been idle for `quiet_s` (True), or `max_wait_s` passed."""
        give_up = time.monotonic() + self._max_wait_s
        while True:
            idle = self._idle_for()
            if idle >= self._quiet_s:
                return True
            left = give_up - time.monotonic()
            if left <= 0:
                return False
            # Idle, not yet long enough: look again when it would be; busy: in a while.
            time.sleep(min(left, self._quiet_s - idle if idle > 0 else self._poll_s))

    def _score(self, sample: _Sample) -> bool:
        """Score one sample, one model call at a time, each in a gap; False (nothing
        recorded) when a gap did not come."""
        model = self._own(sample.model)
        inputs = sample.inputs.to(model.device)
        maps = torch.from_numpy(sample.attributions).to(model.device, inputs.dtype)
        targets = torch.from_numpy(sample.targets).to(model.device)
        scores = element_scores(maps, inputs)
        # Images against a blurred copy: with a zero baseline most pixels of a sparse image
        # are already "deleted", and coarse maps score at chance (docs/quality.md).
        reference = Reference.BLUR if inputs.dim() == 4 else Reference.BASELINE
        steps, rows = self._steps, self._max_rows
        found: dict[Curve, tuple[list[float], list[float]]] = {}
        for kind in (Curve.DELETION, Curve.INSERTION):
            if not self._wait_for_a_gap():
                return False
            explained = curve(
                model,
                inputs,
                scores,
                targets,
                kind,
                steps=steps,
                reference=reference,
                max_rows=rows,
            )
            if not self._wait_for_a_gap():
                return False
            seed = self._draw.randrange(1 << 30)
            chance = random_curve(
                model,
                inputs,
                targets,
                kind,
                orderings=1,
                steps=steps,
                reference=reference,
                max_rows=rows,
                seed=seed,
            )
            found[kind] = (explained.auc.tolist(), chance.auc.tolist())
        labels = (model.name, sample.method)
        for kind, (areas, baselines) in found.items():
            auc = self._metrics.faithfulness_auc.labels(*labels, kind.value)
            # Positive when the map beats a random ranking: less area for deletion,
            # more for insertion.
            sign = -1.0 if kind is Curve.DELETION else 1.0
            gain = self._metrics.faithfulness_gain.labels(*labels, kind.value)
            for value, baseline in zip(areas, baselines, strict=True):
                auc.observe(value)
                gain.observe(sign * (value - baseline))
        self._metrics.faithfulness_scored.labels(*labels).inc(inputs.shape[0])
        figures = {}
        for kind, (values, baselines) in found.items():
            figures[f"{kind.value}_auc"] = values
            figures[f"random_{kind.value}_auc"] = baselines
        self._on_scored(
            SampledScores(
                sample.explanation_id, sample.model, sample.method, reference.value, steps, figures
            )
        )
        return True
