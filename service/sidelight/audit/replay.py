"""Recompute a recorded explanation and say whether it matches.

Replay checks, in order: that the model repository still holds the recorded version with the
recorded file digest; that the input given (or decrypted from the record under its subject's
key) is the one recorded (its HMAC under the server's key equals the record's input digest);
then runs the method again with the recorded parameters, seed and targets and compares the
outputs and attributions.

Why "within tolerance" and not always bit for bit: a synchronous explanation was computed in a
batch with whatever other requests were waiting, in chunks the executor sized by timing, and
a model's float results can differ in the last bits between batch sizes. Replay runs the
instances alone, so it reports the largest difference, relative to the largest attribution,
and calls a match anything within `tolerance` (1e-4 by default). Sampled methods (jobs) fix
their call sizes per model, and their seeds fix their draws: those replay bit for bit.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from sidelight.audit.record import AuditRecord, RecordKind
from sidelight.audit.recording import input_digest
from sidelight.errors import InvalidArgument
from sidelight.jobs.runner import JobRunner
from sidelight.jobs.spec import JobSpec
from sidelight.methods.base import SeededParams
from sidelight.methods.catalog import METHODS
from sidelight.methods.perturbation import Unlimited
from sidelight.models.registry import ModelRegistry
from sidelight.tensors import RawTensor

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ReplayResult:
    matches: bool
    exact: bool  # bit for bit
    model_matches: bool  # the repository's file has the recorded digest
    input_matches: bool  # the input given has the recorded HMAC
    max_abs_difference: float  # attributions
    relative_difference: float  # the same over the largest |attribution| recorded
    outputs_difference: float
    targets_match: bool
    message: str


def replay(
    record: AuditRecord,
    registry: ModelRegistry,
    inputs: npt.NDArray[np.generic],
    input_key: bytes,
    *,
    device: torch.device | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ReplayResult:
    if record.kind is not RecordKind.EXPLANATION:
        raise InvalidArgument("record_id", f"a {record.kind.value} record has nothing to replay")
    entry = registry.get(record.model, record.model_version)
    model_matches = entry.primary.file_digest == record.model_digest
    raw = RawTensor.from_array(np.ascontiguousarray(inputs))
    input_matches = hmac.compare_digest(input_digest(input_key, raw), record.input_digest)
    params = dict(record.params)
    method = METHODS[record.method]
    if issubclass(method.params_type, SeededParams):
        params["seed"] = record.seed
    spec = JobSpec(
        job_id=record.record_id,
        request_id=record.request_id,
        model=record.model,
        model_version=record.model_version,
        method=record.method,
        inputs=raw,
        targets=record.targets,
        params={k: v for k, v in params.items() if v is not None},
    )
    runner = JobRunner(registry, device or entry.primary.device)
    again = runner.explain(spec, Unlimited())
    recorded = np.frombuffer(record.attributions, dtype="<f4").reshape(record.attributions_shape)
    found = np.asarray(again.attributions, dtype=np.float32)
    if found.shape != recorded.shape:
        raise InvalidArgument("inputs", f"replayed shape {found.shape} != {recorded.shape}")
    difference = float(np.abs(found - recorded).max()) if found.size else 0.0
    scale = float(np.abs(recorded).max()) if recorded.size else 0.0
    relative = difference / scale if scale > 0 else difference
    outputs = np.asarray(record.outputs, dtype=np.float64)
    outputs_difference = float(np.abs(np.asarray(again.outputs, np.float64) - outputs).max())
    targets_match = tuple(int(t) for t in again.targets) == record.targets
    exact = bool(np.array_equal(found, recorded))
    matches = (
        model_matches
        and input_matches
        and targets_match
        and relative <= tolerance
        and outputs_difference <= tolerance
    )
    return ReplayResult(
        matches=matches,
        exact=exact,
        model_matches=model_matches,
        input_matches=input_matches,
        max_abs_difference=difference,
        relative_difference=relative,
        outputs_difference=outputs_difference,
        targets_match=targets_match,
        message=_message(matches, exact, model_matches, input_matches, targets_match, relative),
    )


def _message(
    matches: bool,
    exact: bool,
    model_matches: bool,
    input_matches: bool,
    targets_match: bool,
    relative: float,
) -> str:
    if not model_matches:
        return "the model file is not the one recorded (its digest differs)"
    if not input_matches:
        return "the input given is not the one recorded (its HMAC differs)"
    if not targets_match:
        return "the replayed classes differ from the recorded ones"
    if exact:
        return "matches bit for bit"
    if matches:
        return f"matches within tolerance (largest difference {relative:.2e} of the largest value)"
    return f"differs: largest difference {relative:.2e} of the largest attribution"
