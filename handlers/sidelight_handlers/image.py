"""Images: files to model inputs, attributions to heatmap overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_images(
    path: Path, shape: Sequence[int], value_range: tuple[float, float] | None
) -> npt.NDArray[np.float32]:
    """N x C x H x W float32 from an image file (resized, mapped to the range) or a .npy."""
    if path.suffix.lower() == ".npy":
        array: npt.NDArray[np.float32] = np.load(path, allow_pickle=False).astype(np.float32)
        return array[None] if array.ndim == len(shape) else array
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: expected an image ({sorted(IMAGE_SUFFIXES)}) or a .npy file")
    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    with Image.open(path) as image:
        pixels = np.asarray(image.convert(mode).resize((width, height)), dtype=np.float32) / 255.0
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    low, high = value_range or (0.0, 1.0)
    low, high = max(low, 0.0), min(high, 1.0)  # pixel intensities are fractions of white
    scaled: npt.NDArray[np.float32] = (low + pixels * (high - low))[None].astype(np.float32)
    return scaled


def heatmap(attribution: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """C x H x W (or 1 x H x W) attributions -> H x W map of their magnitude, in [0, 1]."""
    magnitude = np.abs(attribution).sum(0)
    peak = float(magnitude.max())
    scaled: npt.NDArray[np.float32] = (magnitude / peak if peak > 0 else magnitude).astype(
        np.float32
    )
    return scaled


def render_overlays(
    images: npt.NDArray[Any],
    attributions: npt.NDArray[Any],
    titles: Sequence[str],
    out: Path,
) -> None:
    """One row per instance: the input, the heatmap, and the heatmap over the input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for row in range(rows):
        picture = _displayable(images[row])
        heat = heatmap(attributions[row])
        axes[row, 0].imshow(picture, cmap="gray", interpolation="nearest")
        axes[row, 0].set_title(titles[row], fontsize=9)
        shown = axes[row, 1].imshow(heat, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        axes[row, 1].set_title("attribution (|value|, scaled)", fontsize=9)
        figure.colorbar(shown, ax=axes[row, 1], fraction=0.046)
        axes[row, 2].imshow(picture, cmap="gray", interpolation="nearest")
        axes[row, 2].imshow(
            heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1, interpolation="bilinear"
        )
        axes[row, 2].set_title("overlay", fontsize=9)
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _displayable(image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """C x H x W -> H x W (gray) or H x W x 3, scaled to [0, 1] for display."""
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return scaled[0] if scaled.shape[0] == 1 else scaled.transpose(1, 2, 0)[..., :3]


SEGMENTATIONS = ("slic", "felzenszwalb", "quickshift")


def superpixels(images: npt.NDArray[Any], method: str, n_segments: int) -> npt.NDArray[np.int64]:
    """N x C x H x W images -> N x H x W labels 0..k-1 (k per image), by scikit-image.

    One call per image: scikit-image segments one image at a time, on the host. For LIME this
    costs once per image against hundreds of model evaluations."""
    from skimage.segmentation import felzenszwalb, quickshift, slic

    labels = []
    for image in images:
        pixels = np.moveaxis(np.asarray(image, dtype=np.float64), 0, -1)  # H x W x C
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        gray = pixels.shape[-1] == 1
        if method == "slic":
            found = slic(
                pixels[..., 0] if gray else pixels,
                n_segments=n_segments,
                compactness=0.1 if gray else 10.0,
                start_label=0,
                channel_axis=None if gray else -1,
            )
        elif method == "felzenszwalb":
            scale = max(1.0, pixels.shape[0] * pixels.shape[1] / n_segments)
            found = felzenszwalb(
                pixels[..., 0] if gray else pixels,
                scale=scale,
                min_size=1,
                channel_axis=None if gray else -1,
            )
        elif method == "quickshift":
            rgb = np.repeat(pixels, 3, axis=-1) if gray else pixels[..., :3]
            found = quickshift(rgb, kernel_size=2, max_dist=6, ratio=0.5)  # type: ignore[no-untyped-call]
        else:
            raise ValueError(f"unknown segmentation {method!r}; one of {SEGMENTATIONS}")
        _, contiguous = np.unique(found, return_inverse=True)
        labels.append(contiguous.reshape(found.shape).astype(np.int64))
    return np.stack(labels)


def render_grid(
    rows: Sequence[tuple[str, Sequence[npt.NDArray[Any]]]],
    columns: Sequence[str],
    out: Path,
) -> None:
    """A grid of heatmaps: one row per method, one column per randomization depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.6 * len(columns), 1.7 * len(rows)), squeeze=False
    )
    for row, (title, maps) in enumerate(rows):
        for column, map_ in enumerate(maps):
            axis = axes[row, column]
            plane = np.abs(map_).sum(0) if map_.ndim == 3 else np.abs(map_)
            axis.imshow(heatmap(plane[None]), cmap="inferno", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=7)
            if column == 0:
                axis.set_ylabel(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
