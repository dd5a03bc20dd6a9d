"""Checks of what a client sent, shared by the API (before anything is queued) and the workers
(which check a job again against the model they hold). Each error names the field at fault."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from sidelight.errors import InvalidArgument, InvalidParams, InvalidTarget, InvalidTensor
from sidelight.models.registry import ModelVersion
from sidelight.tensors import DTYPES, RawTensor

# The longest each string a client sends may be, in characters (docs/operations.md, "Limits").
# Names are short; ids are the client's own (request_id) or one of Sidelight's (job_id and
# record_id: 32 hex digits). A list field's limit holds for each item.
STRING_LIMITS: dict[str, int] = {
    "model": 128,
    "model_version": 32,
    "method": 64,
    "request_id": 128,
    "subject_id": 128,
    "metrics": 64,
    "methods": 64,
    "reference": 32,
    "mode": 32,
    "job_id": 64,
    "record_id": 64,
}
# Params travel as a JSON object: its encoded size, at most (every method's fit in a few hundred).
MAX_PARAMS_BYTES = 16 << 10


def check_lengths(request: object) -> None:
    """Every string field of a data-plane request (and its params) within its limit, before
    anything reads them: a refused value is never echoed, logged, recorded or used as a key."""
    for name, limit in STRING_LIMITS.items():
        value = getattr(request, name, None)
        if isinstance(value, str):
            check_length(name, value)
        elif isinstance(value, Sequence):
            for index, item in enumerate(value):
                if isinstance(item, str):
                    check_length(f"{name}[{index}]", item, limit)
    params = getattr(request, "params", None)
    if params:
        size = len(json.dumps(params, default=str))
        if size > MAX_PARAMS_BYTES:
            raise InvalidParams("params", f"is {size} bytes as JSON; at most {MAX_PARAMS_BYTES}")


def check_length(field: str, value: str, limit: int | None = None) -> None:
    """InvalidArgument naming `field` and its limit when `value` is longer."""
    limit = STRING_LIMITS[field] if limit is None else limit
    if len(value) > limit:
        raise InvalidArgument(field, f"is {len(value)} characters long; at most {limit}")


def validate_inputs(entry: ModelVersion, raw: RawTensor, max_instances: int) -> torch.Tensor:
    """The inputs as a tensor on the CPU, once shape, size, dtype, finiteness and range hold."""
    array = raw.decode("inputs")
    spec = entry.config.input
    expected = [*spec.shape]
    if array.ndim != len(expected) + 1 or list(array.shape[1:]) != expected:
        raise InvalidTensor(
            "inputs.shape",
            f"{list(array.shape)} does not match [N, {', '.join(map(str, expected))}] "
            f"of model {entry.name!r}",
        )
    n = array.shape[0]
    if n == 0:
        raise InvalidTensor("inputs.shape", "holds no instance (N = 0)")
    if n > max_instances:
        raise InvalidTensor(
            "inputs.shape", f"holds {n} instances; at most {max_instances} per request"
        )
    if array.dtype != DTYPES[spec.dtype]:
        raise InvalidTensor(
            "inputs.dtype", f"model {entry.name!r} takes {spec.dtype}, not the dtype sent"
        )
    tensor = torch.from_numpy(array.copy())  # the message's bytes are read-only
    # NaN propagates through min and max, Inf shows as an extreme. numpy, not torch: this
    # runs on the event loop while the executor computes, and a torch reduction here would
    # take threads from the executor's intra-op pool (5% of ResNet-18 Grad-CAM throughput).
    low_seen, high_seen = float(array.min()), float(array.max())
    if not (np.isfinite(low_seen) and np.isfinite(high_seen)):
        where = int((~torch.isfinite(tensor)).reshape(n, -1).any(1).nonzero()[0, 0])
        raise InvalidTensor("inputs.data", f"instance {where} holds NaN or Inf")
    if spec.range is not None and (low_seen < spec.range[0] or high_seen > spec.range[1]):
        low, high = spec.range
        outside = ((tensor < low) | (tensor > high)).reshape(n, -1).any(1)
        where = int(outside.nonzero()[0, 0])
        raise InvalidTensor(
            "inputs.data",
            f"instance {where} has values outside the model's range [{low}, {high}]",
        )
    return tensor


def parse_targets(requested: Sequence[int], n: int, classes: int) -> torch.Tensor:
    """N int64 targets, -1 meaning "the predicted class"."""
    if len(requested) not in (0, 1, n):
        raise InvalidTarget(
            "targets", f"has {len(requested)} values; give none, one, or one per instance ({n})"
        )
    if len(requested) == 0:
        return torch.full((n,), -1, dtype=torch.int64)
    # numpy, not torch: on a handful of values each torch call costs more than the check.
    values = np.fromiter(requested, dtype=np.int64, count=len(requested))
    bad = np.flatnonzero((values < 0) | (values >= classes))
    if bad.size:
        index = int(bad[0])
        raise InvalidTarget(
            f"targets[{index}]", f"class {int(values[index])} is outside [0, {classes})"
        )
    return torch.from_numpy(np.repeat(values, n) if len(requested) == 1 else values)


def check_baseline(entry: ModelVersion, params: Any) -> None:
    name = getattr(params, "baseline", None)
    if name is not None and name not in entry.config.baselines:
        raise InvalidArgument(
            "params.baseline",
            f"model {entry.name!r} has no baseline {name!r}; "
            f"it has {sorted(entry.config.baselines)}",
        )


def finite_params(params: Mapping[str, Any], field: str = "params") -> None:
    """InvalidParams naming the first number in `params` (at any depth) that is NaN or Inf:
    no method parameter, deadline or budget has a meaning for them, and they would otherwise
    fail far from the request (in a bound check, a JSON encoder, an int())."""
    for key, value in params.items():
        _finite(value, f"{field}.{key}")


def _finite(value: Any, field: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidParams(field, f"must be a finite number, not {value}")
    if isinstance(value, Mapping):
        finite_params(value, field)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _finite(item, f"{field}[{index}]")
