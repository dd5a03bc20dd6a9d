"""Tabular rows: files to model inputs, attributions to bar charts."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


def load_rows(
    path: Path, feature_names: Sequence[str] | None, width: int
) -> npt.NDArray[np.float32]:
    """N x F float32 from .npy, .csv (with a header of feature names) or .json.

    JSON: one object {feature: value}, a list of them, or lists of numbers in feature order.
    Named values are put in the model's feature order; a missing or unknown name is an error.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array: npt.NDArray[np.float32] = np.load(path, allow_pickle=False).astype(np.float32)
        return array[None] if array.ndim == 1 else array
    if suffix == ".csv":
        with path.open(newline="") as stream:
            records: list[Any] = list(csv.DictReader(stream))
    elif suffix == ".json":
        loaded = json.loads(path.read_text())
        records = loaded if isinstance(loaded, list) else [loaded]
    else:
        raise ValueError(f"{path}: expected .npy, .csv or .json")
    return np.array([_row(r, feature_names, width) for r in records], dtype=np.float32)


def _row(record: Any, names: Sequence[str] | None, width: int) -> list[float]:
    if isinstance(record, list):
        if len(record) != width:
            raise ValueError(f"a row has {len(record)} values, the model takes {width}")
        return [float(v) for v in record]
    if names is None:
        raise ValueError("the model declares no feature names: give rows as lists of numbers")
    unknown = set(record) - set(names)
    missing = [n for n in names if n not in record]
    if unknown or missing:
        raise ValueError(f"unknown features {sorted(unknown)}, missing features {missing}")
    return [float(record[n]) for n in names]


def top_features(
    attribution: npt.NDArray[Any], names: Sequence[str], k: int = 10
) -> list[tuple[str, float]]:
    """The k features with the largest |attribution|, largest first."""
    order = np.argsort(-np.abs(attribution))[:k]
    return [(names[i], float(attribution[i])) for i in order]


def render_bars(
    attributions: npt.NDArray[Any],
    names: Sequence[str],
    titles: Sequence[str],
    out: Path,
    k: int = 12,
) -> None:
    """One horizontal bar chart per instance: the top-k features, red for, blue against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(attributions)
    figure, axes = plt.subplots(rows, 1, figsize=(8, 0.35 * k * rows + 1), squeeze=False)
    for row in range(rows):
        top = top_features(attributions[row], names, k)[::-1]
        labels = [name for name, _ in top]
        values = [value for _, value in top]
        axis = axes[row, 0]
        axis.barh(labels, values, color=["#c0392b" if v > 0 else "#2e86c1" for v in values])
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(titles[row], fontsize=10)
        axis.set_xlabel("attribution (towards the explained class >0)")
        axis.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
