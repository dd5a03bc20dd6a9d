"""The summary a record keeps: per instance, the top-k grid regions of an image map (or the
top-k features of a row) by |attribution|, checked against sums written out cell by cell."""

from __future__ import annotations

import numpy as np
import pytest
from sidelight.audit.recording import summarize

from .support import top_regions


@pytest.mark.parametrize(
    "shape", [(3, 1, 8, 8), (2, 1, 224, 224), (2, 3, 7, 9), (1, 1, 3, 2), (2, 3, 10, 6)]
)
def test_image_regions_are_the_cell_sums(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    attributions = rng.normal(size=shape).astype(np.float32)
    summary = summarize(attributions, (), top_k=8)
    expected = top_regions(attributions, 8)
    assert len(summary) == shape[0]
    for instance, cells in zip(summary, expected, strict=True):
        assert [w.name.split(" (")[0] for w in instance] == [span for span, _ in cells]
        assert [w.value for w in instance] == pytest.approx([value for _, value in cells], 1e-9)


def test_tabular_rows_keep_their_top_features_by_magnitude() -> None:
    attributions = np.array([[0.25, -3.0, 2.0, 0.0], [1.0, 1.5, -0.5, -2.5]], dtype=np.float32)
    summary = summarize(attributions, ("a", "b", "c", "d"), top_k=3)
    assert [(w.name, w.value) for w in summary[0]] == [("b", -3.0), ("c", 2.0), ("a", 0.25)]
    assert [(w.name, w.value) for w in summary[1]] == [("d", -2.5), ("b", 1.5), ("a", 1.0)]
    unnamed = summarize(attributions[:1], (), top_k=1)
    assert [(w.name, w.value) for w in unnamed[0]] == [("feature 1", -3.0)]
