"""RISE (Petsiuk et al. 2018): the saliency of a pixel is the expected probability of the
class over random masks that keep it, S = sum_i f(x . M_i + b . (1 - M_i)) M_i / (N p).

Masks are small random binary grids, upsampled bilinearly and shifted by a random fraction of
a cell, as in the paper. Captum has no RISE; the tests check the estimator against its formula
computed in numpy from the same masks, and that it finds what a model looks at.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from sidelight.errors import ConfigError, InvalidParams
from sidelight.methods.base import Attribution, AttributionShape, Batch, SeededParams
from sidelight.methods.perturbation import (
    Evaluator,
    PerturbationMethod,
    generator,
    require_baseline,
    target_scores,
)
from sidelight.models.config import Task
from sidelight.models.model import Model


class RiseParams(SeededParams):
    n_masks: int = Field(default=1000, ge=1, le=1 << 16)
    # Cells per side of the random grid; None: 7 (the paper's), at most half the image side.
    grid: int | None = Field(default=None, ge=2, le=64)
    # Probability that a cell is kept.
    keep: float = Field(default=0.5, gt=0.0, lt=1.0)
    baseline: str | None = None  # what hidden pixels become; None: the model's default


def _grid(params: RiseParams, height: int, width: int) -> int:
    return params.grid or max(2, min(7, min(height, width) // 2))


def coarse_masks(
    rng: torch.Generator, count: int, grid: int, keep: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of `count` masks, drawn up front on the CPU (small): count x grid x grid
    kept cells, and count x 2 shifts in pixels (within one cell)."""
    cells = (torch.rand(count, grid, grid, generator=rng) < keep).float()
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    shifts = torch.stack(
        [
            torch.randint(0, cell_h, (count,), generator=rng),
            torch.randint(0, cell_w, (count,), generator=rng),
        ],
        1,
    )
    return cells, shifts


def upsample_masks(
    cells: torch.Tensor, shifts: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """count x H x W masks in [0, 1]: each grid upsampled bilinearly to (grid+1) cells, then
    cropped at its shift."""
    count, grid = cells.shape[0], cells.shape[1]
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    big = F.interpolate(
        cells.unsqueeze(1),
        size=((grid + 1) * cell_h, (grid + 1) * cell_w),
        mode="bilinear",
        align_corners=False,
    ).squeeze(1)
    rows = shifts[:, 0:1] + torch.arange(height, device=cells.device)[None, :]  # count x H
    cols = shifts[:, 1:2] + torch.arange(width, device=cells.device)[None, :]
    index = torch.arange(count, device=cells.device)[:, None, None]
    return big[index, rows[:, :, None], cols[:, None, :]]


class Rise(PerturbationMethod[RiseParams]):
    name = "rise"
    params_type = RiseParams
    shape = AttributionShape.LAYER  # N x 1 x H x W: one map per image, across channels
    summary = "Randomized input sampling: class probability averaged over random masks (RISE)."

    def check(self, model: Model) -> None:
        if model.config.task is not Task.IMAGE_CLASSIFICATION or len(model.input_shape) != 3:
            raise ConfigError("config.yaml", "methods", "rise explains images (C x H x W) only")

    def check_params(self, model: Model, params: RiseParams) -> None:
        require_baseline(model, params.baseline)
        height, width = model.input_shape[1:]
        if params.grid is not None and params.grid > min(height, width):
            raise InvalidParams("params.grid", f"{params.grid} cells is more than the image's side")

    def run_group(
        self, model: Model, batch: Batch, params: RiseParams, evaluator: Evaluator
    ) -> Attribution:
        inputs = batch.inputs
        n, height, width = inputs.shape[0], inputs.shape[2], inputs.shape[3]
        grid = _grid(params, height, width)
        cells, shifts = coarse_masks(
            generator(batch), params.n_masks, grid, params.keep, height, width
        )
        baseline = model.baseline(params.baseline).tensor
        evaluator.planned = n + n * params.n_masks
        outputs = evaluator.outputs(inputs)
        targets = torch.where(batch.targets < 0, outputs.argmax(1), batch.targets)
        per_round = max(1, evaluator.max_rows // max(1, n))
        total = torch.zeros(n, height, width, dtype=torch.float64, device=inputs.device)
        done = 0
        while done < params.n_masks:
            size = min(per_round, params.n_masks - done)
            if not evaluator.afford(n * size):
                break
            masks = upsample_masks(
                cells[done : done + size].to(inputs.device),
                shifts[done : done + size].to(inputs.device),
                height,
                width,
            ).to(inputs.dtype)  # s x H x W
            kept = masks[None, :, None]  # 1 x s x 1 x H x W
            rows = inputs.unsqueeze(1) * kept + baseline.unsqueeze(1) * (1 - kept)
            scores = target_scores(
                evaluator.probabilities(rows.reshape(-1, *inputs.shape[1:])), targets, size
            )  # N x s
            total += torch.einsum("ns,shw->nhw", scores.double(), masks.double())
            done += size
        saliency = (total / (max(1, done) * params.keep)).to(inputs.dtype)
        return Attribution(
            attributions=saliency.unsqueeze(1),
            outputs=outputs,
            targets=targets,
            evaluations_per_instance=math.ceil(evaluator.evaluations / max(1, n)),
            stopped_by=evaluator.stopped_by,
        )
