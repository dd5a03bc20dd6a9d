"""Occlusion (Zeiler & Fergus 2014): slide a window over the input, replace what it covers by
the baseline, and credit each element with the mean drop of the explained probability over
the windows that cover it.

Written here rather than called from Captum: Captum's Occlusion runs one instance's windows
per call (`perturbations_per_eval`) with no way to stop between calls; here every instance's
windows go through the model together, a round at a time, so a job's deadline, budget and
cancellation apply. The tests compare it with Captum's Occlusion.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from sidelight.errors import InvalidParams
from sidelight.methods.base import Attribution, Batch, Params
from sidelight.methods.perturbation import (
    Evaluator,
    PerturbationMethod,
    require_baseline,
    target_scores,
)
from sidelight.models.model import Model


class OcclusionParams(Params):
    # Side of the (square) window in elements: pixels of an image, features of a row.
    # None: one feature of a row; a quarter of an image's side.
    window: int | None = Field(default=None, ge=1, le=4096)
    # Step between windows; None: the window's side (windows tile the input).
    stride: int | None = Field(default=None, ge=1, le=4096)
    # What an occluded element becomes; None: the model's default baseline.
    baseline: str | None = None


def window_masks(space: tuple[int, ...], window: int, stride: int) -> torch.Tensor:
    """P x space bool: each window's cover, windows at 0, stride, ... along each dimension
    of `space` (H x W for images, F for rows) while they fit (Captum's placement)."""
    starts = [range(0, max(1, size - window + 1), stride) for size in space]
    grids = torch.meshgrid(*[torch.tensor(list(s)) for s in starts], indexing="ij")
    origins = torch.stack([g.reshape(-1) for g in grids], 1)  # P x dims
    masks = torch.ones(origins.shape[0], *space, dtype=torch.bool)
    for dim, size in enumerate(space):
        positions = torch.arange(size)
        inside = (positions[None, :] >= origins[:, dim : dim + 1]) & (
            positions[None, :] < origins[:, dim : dim + 1] + window
        )  # P x size
        shape = [origins.shape[0]] + [1] * len(space)
        shape[dim + 1] = size
        masks &= inside.reshape(shape)
    return masks


def _space(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The dimensions windows slide over: H x W of a C x H x W image, else all."""
    return tuple(shape[1:]) if len(shape) == 3 else tuple(shape)


def _window(params: OcclusionParams, space: tuple[int, ...]) -> int:
    if params.window is not None:
        return params.window
    return 1 if len(space) == 1 else max(1, min(space) // 4)


class Occlusion(PerturbationMethod[OcclusionParams]):
    name = "occlusion"
    params_type = OcclusionParams
    summary = "The probability lost when a sliding window hides each region (occlusion)."

    def check_params(self, model: Model, params: OcclusionParams) -> None:
        space = _space(model.input_shape)
        if _window(params, space) > min(space):
            raise InvalidParams(
                "params.window", f"{params.window} is larger than the input ({list(space)})"
            )
        require_baseline(model, params.baseline)

    def run_group(
        self, model: Model, batch: Batch, params: OcclusionParams, evaluator: Evaluator
    ) -> Attribution:
        inputs = batch.inputs
        n = inputs.shape[0]
        image = inputs.dim() == 4
        space = _space(tuple(inputs.shape[1:]))
        window = _window(params, space)
        masks = window_masks(space, window, params.stride or window)
        masks = masks.to(inputs.device)
        count = masks.shape[0]
        baseline = model.baseline(params.baseline).tensor
        evaluator.planned = n + n * count
        outputs = evaluator.outputs(inputs)
        targets = torch.where(batch.targets < 0, outputs.argmax(1), batch.targets)
        full = model.probabilities(outputs).gather(1, targets[:, None]).squeeze(1)
        per_round = max(1, evaluator.max_rows // max(1, n))
        drops = []
        done = 0
        while done < count:
            cover = masks[done : done + per_round]  # p x space
            if not evaluator.afford(n * cover.shape[0]):
                break
            hidden = cover.unsqueeze(1) if image else cover  # p x (1) x space
            rows = torch.where(hidden.unsqueeze(0), baseline.unsqueeze(1), inputs.unsqueeze(1))
            scores = target_scores(
                evaluator.probabilities(rows.reshape(-1, *inputs.shape[1:])),
                targets,
                cover.shape[0],
            )
            drops.append(full[:, None] - scores)
            done += cover.shape[0]
        used = masks[:done].to(inputs.dtype).reshape(done, -1)  # done x elements
        drop = torch.cat(drops, 1) if drops else torch.zeros(n, 0, device=inputs.device)
        totals = drop.to(inputs.dtype) @ used  # N x elements
        covered = used.sum(0).clamp_min(1)
        per_element = (totals / covered).reshape(n, *space)
        attributions = per_element.unsqueeze(1).expand_as(inputs) if image else per_element
        return Attribution(
            attributions=attributions.contiguous(),
            outputs=outputs,
            targets=targets,
            evaluations_per_instance=math.ceil(evaluator.evaluations / max(1, n)),
            stopped_by=evaluator.stopped_by,
        )
