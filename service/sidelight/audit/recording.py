"""From a served explanation (or prediction) to its audit record.

What goes in, and why:
- the input only as a keyed digest (HMAC-SHA256 under the server's key): equal inputs can be
  recognised later by whoever holds the key, but the log alone does not reveal them, and a
  guessable input (a small tabular row) cannot be confirmed by hashing candidates;
- per instance, the top-k reasons: named features for tabular models, regions of a grid for
  images ("rows 1-2, columns 5-6 (top right)"), each with its signed attribution, so that a
  report can say in words what mattered; and the full attributions beside them;
- the versions of the libraries that computed it, read once per process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import importlib.metadata
import math
import platform
import time
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from sidelight.audit.record import AuditRecord, FeatureWeight, RecordKind
from sidelight.explanations import Explanation, Quality
from sidelight.models.model import Model
from sidelight.tensors import RawTensor

TOP_K = 8
# Images are summarised over a grid of at most this many cells a side.
GRID = 4
LIBRARIES = ("sidelight", "torch", "captum", "numpy", "onnxruntime", "scikit-image")


@cache
def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def input_digest(key: bytes, inputs: RawTensor) -> str:
    """HMAC-SHA256 of the dtype, the shape and the bytes, under the server's key."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(f"{inputs.dtype}:{','.join(map(str, inputs.shape))}:".encode())
    mac.update(inputs.data)
    return mac.hexdigest()


def summarize(
    attributions: npt.NDArray[np.float32],
    feature_names: tuple[str, ...],
    top_k: int = TOP_K,
) -> tuple[tuple[FeatureWeight, ...], ...]:
    """Per instance, the top-k features (rows) or grid regions (images) by |attribution|.
    Vectorised over the batch: the server calls it once per computed batch, on the executor's
    thread (`DataPlane`'s explain groups), so that a record costs the event loop no numpy
    calls."""
    n = attributions.shape[0]
    if attributions.ndim == 2:
        values = attributions.astype(np.float64)
        names = list(feature_names or (f"feature {i}" for i in range(attributions.shape[1])))
    else:
        plane = attributions.reshape(n, -1, *attributions.shape[-2:]).sum(1, dtype=np.float64)
        values, names = _regions(plane)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :top_k]
    picked = values[np.arange(n)[:, None], order].tolist()  # Python floats, in one call
    label = names.__getitem__
    return tuple(
        tuple(map(FeatureWeight, map(label, order_i), picked_i))
        for order_i, picked_i in zip(order.tolist(), picked, strict=True)
    )


def _regions(
    plane: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """Sums over a grid of cells (N x cells, row by row), and the cells' names: two passes of
    `reduceat` over the map, cheap even for 224 x 224 (a cells matrix was 6 MB per product)."""
    _, height, width = plane.shape
    row_starts, col_starts, names = _grid(height, width)
    sums = np.add.reduceat(np.add.reduceat(plane, row_starts, axis=1), col_starts, axis=2)
    return sums.reshape(plane.shape[0], -1), names


@functools.lru_cache(maxsize=16)
def _grid(height: int, width: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[str]]:
    """Where a map's grid cells start (rows, columns) and their names, row by row."""
    rows = np.array_split(np.arange(height), min(GRID, height))
    cols = np.array_split(np.arange(width), min(GRID, width))
    names = [
        f"rows {row[0] + 1}-{row[-1] + 1}, columns {col[0] + 1}-{col[-1] + 1} "
        f"({_where(r, len(rows), c, len(cols))})"
        for r, row in enumerate(rows)
        for c, col in enumerate(cols)
    ]
    return np.array([row[0] for row in rows]), np.array([col[0] for col in cols]), names


def _where(row: int, rows: int, col: int, cols: int) -> str:
    vertical = ("top", "upper middle", "lower middle", "bottom") if rows == 4 else None
    horizontal = ("left", "centre left", "centre right", "right") if cols == 4 else None
    up = vertical[row] if vertical else f"band {row + 1} of {rows} from the top"
    across = horizontal[col] if horizontal else f"band {col + 1} of {cols} from the left"
    return f"{up} {across}"


def quality_content(quality: Quality) -> dict[str, Any]:
    return {
        "completeness_error": finite(quality.completeness_error),
        "relative_completeness_error": finite(quality.relative_completeness_error),
        "model_evaluations": quality.model_evaluations,
        "seed": quality.seed,
        "stopped_by": quality.stopped_by,
        "local_fidelity": finite(quality.local_fidelity),
        "faithfulness": (
            {
                key: finite(value) if isinstance(value, list) else value
                for key, value in dataclasses.asdict(quality.faithfulness).items()
            }
            if quality.faithfulness is not None
            else None
        ),
    }


def finite(values: list[float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def explanation_record(
    explanation: Explanation,
    model: Model,
    inputs: RawTensor,
    params: Mapping[str, Any],
    *,
    key: bytes,
    caller: str,
    subject_id: str,
    encrypted_input: bytes = b"",
    top_k: int = TOP_K,
    reasons: tuple[tuple[FeatureWeight, ...], ...] | None = None,
) -> AuditRecord:
    """`reasons`: the attributions' summary when computed beforehand (with the batch)."""
    attributions = np.ascontiguousarray(explanation.attributions, dtype="<f4")
    feature_names = tuple(model.config.input.feature_names or ())
    return AuditRecord(
        record_id=explanation.explanation_id,
        kind=RecordKind.EXPLANATION,
        time=time.time(),
        caller=caller,
        request_id=explanation.request_id,
        subject_id=subject_id,
        model=explanation.model,
        model_version=explanation.model_version,
        model_digest=model.file_digest,
        method=explanation.method,
        params=dict(params),
        seed=explanation.quality.seed,
        baseline_digest=explanation.quality.baseline_digest,
        input_digest=input_digest(key, inputs),
        input_dtype=inputs.dtype,
        input_shape=tuple(inputs.shape),
        labels=tuple(model.config.labels),
        feature_names=feature_names,
        outputs=tuple(map(tuple, np.asarray(explanation.outputs, dtype=np.float64).tolist())),
        targets=tuple(np.asarray(explanation.targets).tolist()),
        summary=summarize(attributions, feature_names, top_k) if reasons is None else reasons,
        attributions_shape=tuple(attributions.shape),
        attributions=attributions.tobytes(),
        quality=quality_content(explanation.quality),
        versions=library_versions(),
        encrypted_input=encrypted_input,
    )


def prediction_record(
    record_id: str,
    model: Model,
    inputs: RawTensor,
    outputs: npt.NDArray[np.float32],
    predicted: npt.NDArray[np.int64],
    *,
    request_id: str,
    key: bytes,
    caller: str,
    subject_id: str,
    encrypted_input: bytes = b"",
) -> AuditRecord:
    return AuditRecord(
        record_id=record_id,
        kind=RecordKind.PREDICTION,
        time=time.time(),
        caller=caller,
        request_id=request_id,
        subject_id=subject_id,
        model=model.name,
        model_version=model.version,
        model_digest=model.file_digest,
        input_digest=input_digest(key, inputs),
        input_dtype=inputs.dtype,
        input_shape=tuple(inputs.shape),
        labels=tuple(model.config.labels),
        feature_names=tuple(model.config.input.feature_names or ()),
        outputs=tuple(map(tuple, np.asarray(outputs, dtype=np.float64).tolist())),
        targets=tuple(np.asarray(predicted).tolist()),
        versions=library_versions(),
        encrypted_input=encrypted_input,
    )
