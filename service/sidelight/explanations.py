"""An explanation as Sidelight returns it, whichever path computed it (a batch or a job):
a method's tensors turned into probabilities, maps and quality figures on the host."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from sidelight.audit.record import FeatureWeight
from sidelight.methods.base import Attribution, AttributionShape, Batch, Params
from sidelight.methods.catalog import AnyMethod
from sidelight.methods.chunking import (
    Measure,
    equal_parts,
    instances_per_chunk,
    run_chunked,
    unmeasured,
)
from sidelight.models.model import Model
from sidelight.quality.evaluate import FaithfulnessScores


@dataclass(frozen=True)
class Quality:
    completeness_error: list[float]
    relative_completeness_error: list[float]
    model_evaluations: int
    seed: int | None
    baseline_digest: str
    # Why a job stopped before its planned end ("deadline", "budget"): the result is partial.
    stopped_by: str = ""
    # Per instance: the surrogate's weighted R² on its samples (LIME's local fidelity).
    local_fidelity: list[float] = field(default_factory=list)
    # Faithfulness figures computed for this explanation (a job's "evaluate" param).
    faithfulness: FaithfulnessScores | None = None


@dataclass(frozen=True)
class Explanation:
    explanation_id: str
    model: str
    model_version: str
    method: str
    outputs: npt.NDArray[np.float32]
    targets: npt.NDArray[np.int64]
    attributions: npt.NDArray[np.float32]
    quality: Quality
    request_id: str


def new_explanation_id() -> str:
    """A new id for an explanation, a job or an audit record: 122 random bits from the OS's
    CSPRNG (uuid4 reads os.urandom). The ids guard what they name (a job is read and cancelled
    by its id), so a seeded generator will not do: its state is recovered from a few hundred
    ids, and a forked process repeats its parent's. The system call costs about a microsecond."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class BatchResult:
    """A batch's results on the CPU, sliced per request by `split_result`."""

    outputs: npt.NDArray[np.float32]
    targets: npt.NDArray[np.int64]
    attributions: npt.NDArray[np.float32] | None
    completeness_error: npt.NDArray[np.float64] | None
    relative_error: npt.NDArray[np.float64] | None
    evaluations_per_instance: int
    stopped_by: str = ""
    local_fidelity: npt.NDArray[np.float64] | None = None
    # Per instance, the top-k reasons an audit record keeps: computed with the batch when the
    # server keeps an audit log (one vectorised call instead of one per request).
    reasons: tuple[tuple[FeatureWeight, ...], ...] | None = None


def split_result(result: BatchResult, start: int, stop: int) -> BatchResult:
    def part(array: Any) -> Any:
        return None if array is None else array[start:stop]

    return BatchResult(
        result.outputs[start:stop],
        result.targets[start:stop],
        part(result.attributions),
        part(result.completeness_error),
        part(result.relative_error),
        result.evaluations_per_instance,
        result.stopped_by,
        part(result.local_fidelity),
        part(result.reasons),
    )


def _cpu(tensor: torch.Tensor) -> Any:
    return tensor.detach().to("cpu").numpy()


def run_predict(
    model: Model,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: torch.Tensor,
    max_rows: int,
    measure: Measure = unmeasured,
) -> BatchResult:
    outputs = forward_in_chunks(model, inputs, max_rows, measure)
    return BatchResult(
        _cpu(model.probabilities(outputs).float()), _cpu(outputs.argmax(1)), None, None, None, 1
    )


def run_explain(
    method: AnyMethod,
    params: Any,
    model: Model,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    seeds: torch.Tensor,
    max_rows: int,
    measure: Measure = unmeasured,
) -> BatchResult:
    batch = Batch(inputs=inputs, targets=targets, seeds=seeds)
    rows_per_instance = method.rows_per_instance(params)
    if method.forward_first and len(batch) > instances_per_chunk(rows_per_instance, max_rows):
        # Not timed for the chunk sizer: a forward pass alone is cheaper per row than the
        # attribution calls it compares, and would blur them.
        batch = Batch(inputs, targets, seeds, outputs=forward_in_chunks(model, inputs, max_rows))
    result = run_chunked(
        batch,
        rows_per_instance,
        max_rows,
        lambda part: method.attribute(model, part, params, max_rows),
        measure,
    )
    return summarize(method, model, result)


def forward_in_chunks(
    model: Model, inputs: torch.Tensor, max_rows: int, measure: Measure = unmeasured
) -> torch.Tensor:
    """The model's outputs at `inputs`, in equal calls of at most `max_rows` rows (the split
    the chunk sizer assumes: see sizing._fills), each seen by `measure`."""
    with torch.no_grad():
        return torch.cat(
            [
                measure(stop - start, functools.partial(model.module, inputs[start:stop]))
                for start, stop in equal_parts(len(inputs), max_rows)
            ]
        )


def summarize(method: AnyMethod, model: Model, result: Attribution) -> BatchResult:
    """A method's tensors as the response carries them: probabilities, maps, quality."""
    error = relative = None
    if result.completeness_error is not None and result.reference_gap is not None:
        gap = result.reference_gap.abs()
        absolute = result.completeness_error.abs()
        ratio = torch.where(
            gap > 0, absolute / gap.clamp_min(1e-30), torch.where(absolute > 0, torch.inf, 0.0)
        )
        error, relative = _cpu(result.completeness_error.double()), _cpu(ratio.double())
    attributions = result.attributions.float()
    if method.shape is AttributionShape.LAYER and attributions.dim() == 3:
        attributions = attributions.unsqueeze(1)
    return BatchResult(
        _cpu(model.probabilities(result.outputs).float()),
        _cpu(result.targets),
        _cpu(attributions),
        error,
        relative,
        result.evaluations_per_instance,
        result.stopped_by,
        None if result.local_fidelity is None else _cpu(result.local_fidelity.double()),
    )


def explanation_of(
    model_name: str,
    version: str,
    method: AnyMethod,
    params: Params,
    model: Model,
    result: BatchResult,
    *,
    seed: int | None,
    request_id: str,
    instances: int,
) -> Explanation:
    assert result.attributions is not None
    baseline = getattr(params, "baseline", None) if uses_baseline(params) else None
    return Explanation(
        explanation_id=new_explanation_id(),
        model=model_name,
        model_version=version,
        method=method.name,
        outputs=result.outputs,
        targets=result.targets,
        attributions=result.attributions,
        quality=Quality(
            completeness_error=_list(result.completeness_error),
            relative_completeness_error=_list(result.relative_error),
            model_evaluations=result.evaluations_per_instance * instances,
            seed=seed,
            baseline_digest=model.baseline(baseline).digest if uses_baseline(params) else "",
            stopped_by=result.stopped_by,
            local_fidelity=_list(result.local_fidelity),
        ),
        request_id=request_id,
    )


def uses_baseline(params: Any) -> bool:
    return "baseline" in type(params).model_fields


def _list(array: npt.NDArray[np.float64] | None) -> list[float]:
    return [] if array is None else array.tolist()
