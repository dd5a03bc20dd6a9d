"""SmoothGrad and VarGrad (Smilkov et al. 2017; Adebayo et al. 2018): a gradient method
averaged (or its variance taken) over noisy copies of the input.

Composition, not copies: both wrap any gradient method of the catalog (`base`). Written here
rather than with Captum's NoiseTunnel because NoiseTunnel draws from the process-global RNG:
its results would depend on what else ran in the server and on how requests were batched. Here
each request's noise comes from its own seed, so a seed reproduces bit for bit and an instance
gets the same explanation alone or in any batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sidelight.errors import InvalidParams
from sidelight.methods.base import (
    Attribution,
    Batch,
    Method,
    Params,
    SeededParams,
    resolve_targets,
)
from sidelight.methods.chunking import run_chunked
from sidelight.models.model import Capability, Model

BaseName = Literal["saliency", "input_x_gradient", "integrated_gradients", "guided_backprop"]


class NoiseParams(SeededParams):
    samples: int = Field(default=25, ge=1, le=1024)
    # Noise standard deviation as a fraction of each instance's value range (max - min).
    noise_level: float = Field(default=0.15, gt=0.0, le=1.0)
    base: BaseName = "saliency"


def draw_noise(seeds: torch.Tensor, samples: int, like: torch.Tensor) -> torch.Tensor:
    """N x samples x input shape of standard normal noise, a stream per distinct seed.

    One draw per request (instances of a request share its seed), not per instance.
    """
    noise = torch.empty(
        (len(seeds), samples, *like.shape[1:]), dtype=like.dtype, device=like.device
    )
    for seed in torch.unique(seeds).tolist():
        generator = torch.Generator(device=like.device).manual_seed(int(seed))
        draw = torch.randn(
            (samples, *like.shape[1:]), generator=generator, dtype=like.dtype, device=like.device
        )
        noise[(seeds == seed).to(like.device)] = draw
    return noise


class _NoiseTunnel(Method[NoiseParams]):
    params_type = NoiseParams
    needs = frozenset({Capability.GRADIENTS})
    forward_first = True
    cost_param = "samples"
    reduce: str

    def __init__(self, bases: dict[str, Method[Params]]) -> None:
        self.bases = bases

    def rows_per_instance(self, params: NoiseParams) -> int:
        base = self.bases[params.base]
        return params.samples * base.rows_per_instance(base.params_type())

    def evaluations_per_instance(self, params: NoiseParams) -> int:
        base = self.bases[params.base]
        return 1 + params.samples * base.evaluations_per_instance(base.params_type())

    def check_params(self, model: Model, params: NoiseParams) -> None:
        missing = self.bases[params.base].needs - model.capabilities
        if missing:  # e.g. guided_backprop on TorchScript: its rules would silently not apply
            raise InvalidParams(
                "params.base",
                f"{params.base} needs {sorted(c.value for c in missing)}, which model "
                f"{model.name!r} does not offer (method {self.name})",
            )

    def attribute(
        self, model: Model, batch: Batch, params: NoiseParams, max_rows: int
    ) -> Attribution:
        self.check_params(model, params)
        base = self.bases[params.base]
        base_params = base.params_type()
        outputs, targets = resolve_targets(model, batch)
        n, s = len(batch), params.samples
        x = batch.inputs
        spread = (x.reshape(n, -1).amax(1) - x.reshape(n, -1).amin(1)).clamp_min(1e-12)
        sigma = (params.noise_level * spread).reshape(n, 1, *([1] * (x.dim() - 1)))
        noisy = x.unsqueeze(1) + sigma * draw_noise(batch.seeds, s, x)  # N x S x ...
        expanded = Batch(
            inputs=noisy.reshape(n * s, *x.shape[1:]),
            targets=targets.repeat_interleave(s),
            seeds=batch.seeds.repeat_interleave(s),
        )
        result = run_chunked(
            expanded,
            base.rows_per_instance(base_params),
            max_rows,
            lambda part: base.attribute(model, part, base_params, max_rows),
        )
        per_sample = result.attributions.reshape(n, s, *result.attributions.shape[1:])
        if self.reduce == "mean":
            attributions = per_sample.mean(1)
        else:
            attributions = per_sample.var(1, unbiased=False)
        evaluations = 1 + s * result.evaluations_per_instance
        return Attribution(attributions, outputs, targets, evaluations)


class SmoothGrad(_NoiseTunnel):
    name = "smoothgrad"
    reduce = "mean"
    summary = "A gradient method averaged over noisy copies of the input."


class VarGrad(_NoiseTunnel):
    name = "vargrad"
    reduce = "var"
    summary = "The variance of a gradient method over noisy copies of the input."
