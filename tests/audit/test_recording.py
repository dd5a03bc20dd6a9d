"""The summary a record keeps: per instance, the top-k grid regions of an image map (or the
top-k features of a row) by |attribution|, checked against sums written out cell by cell."""

from __future__ import annotations

import numpy as np
import pytest
from sidelight.audit.recording import GRID, summarize


def regions_by_hand(attributions: np.ndarray) -> tuple[list[list[float]], list[str]]:
    """Each instance's sum over every cell of a GRID x GRID split (np.array_split's), with
    the channels added up, looping over cells; and the cells' row/column ranges."""
    n, height, width = attributions.shape[0], *attributions.shape[-2:]
    rows = np.array_split(np.arange(height), min(GRID, height))
    cols = np.array_split(np.arange(width), min(GRID, width))
    sums = []
    for i in range(n):
        plane = attributions[i].reshape(-1, height, width).astype(np.float64)
        sums.append(
            [
                float(plane[:, row[0] : row[-1] + 1, col[0] : col[-1] + 1].sum())
                for row in rows
                for col in cols
            ]
        )
    spans = [
        f"rows {row[0] + 1}-{row[-1] + 1}, columns {col[0] + 1}-{col[-1] + 1}"
        for row in rows
        for col in cols
    ]
    return sums, spans


@pytest.mark.parametrize(
    "shape", [(3, 1, 8, 8), (2, 1, 224, 224), (2, 3, 7, 9), (1, 1, 3, 2), (2, 3, 10, 6)]
)
def test_image_regions_are_the_cell_sums(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    attributions = rng.normal(size=shape).astype(np.float32)
    summary = summarize(attributions, (), top_k=8)
    sums, spans = regions_by_hand(attributions)
    assert len(summary) == shape[0]
    for instance, expected in zip(summary, sums, strict=True):
        order = sorted(range(len(expected)), key=lambda j: -abs(expected[j]))[:8]
        assert [w.name.split(" (")[0] for w in instance] == [spans[j] for j in order]
        assert [w.value for w in instance] == pytest.approx([expected[j] for j in order], 1e-9)


def test_tabular_rows_keep_their_top_features_by_magnitude() -> None:
    attributions = np.array([[0.25, -3.0, 2.0, 0.0], [1.0, 1.5, -0.5, -2.5]], dtype=np.float32)
    summary = summarize(attributions, ("a", "b", "c", "d"), top_k=3)
    assert [(w.name, w.value) for w in summary[0]] == [("b", -3.0), ("c", 2.0), ("a", 0.25)]
    assert [(w.name, w.value) for w in summary[1]] == [("d", -2.5), ("b", 1.5), ("a", 1.0)]
    unnamed = summarize(attributions[:1], (), top_k=1)
    assert [(w.name, w.value) for w in unnamed[0]] == [("feature 1", -3.0)]
