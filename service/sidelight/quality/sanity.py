"""Model-parameter randomization tests (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation that describes the model must change when the model's weights are destroyed.
Cascading randomization re-draws the layers from the top (the output layer) down, one more at
each depth; independent randomization re-draws one layer at a time. At each depth the method
explains the same inputs for the same targets (the trained model's predictions), and the maps
are compared with the trained model's by

- Spearman rank correlation of the values, and of their absolute values;
- the same restricted to the elements where the input is not zero (on sparse inputs such as
  the digits, any map multiplied by the input keeps the input's zeros, whatever the weights:
  over all pixels its rank correlation stays high for that reason alone);
- SSIM of the normalised absolute maps (images).

A layer is re-drawn from a normal distribution with the std of its trained weights (biases
likewise), under a fixed seed, in a copy of the model: the served model is never touched.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import rankdata

from sidelight.methods.base import Batch, Params
from sidelight.methods.catalog import AnyMethod, method_for, parse_params
from sidelight.models.config import SanityConfig
from sidelight.models.model import Model
from sidelight.models.modularize import LAYER_MARKER


def parameter_layers(model: Model) -> list[str]:
    """Names of the modules that own parameters, from the output back to the input."""
    names = [
        name
        for name, module in model.module.named_modules()
        if name and any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


def randomized(model: Model, layers: Sequence[str], seed: int) -> Model:
    """A copy of `model` whose `layers` are re-drawn; everything else shared."""
    module = copy.deepcopy(model.module)
    rng = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name in layers:
            for parameter in module.get_submodule(name).parameters(recurse=False):
                scale = float(parameter.std()) if parameter.numel() > 1 else 1.0
                drawn = torch.randn(parameter.shape, generator=rng) * (scale or 1.0)
                parameter.copy_(drawn.to(parameter.device, parameter.dtype))
    layer = module.get_submodule(LAYER_MARKER) if model.layer is not None else None
    return replace(model, module=module, layer=layer)


def _average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    ranks: npt.NDArray[np.float64] = rankdata(values, method="average", axis=1)
    return ranks


def spearman(
    a: npt.NDArray[np.float64],
    b: npt.NDArray[np.float64],
    keep: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """Per row, Spearman's rho (ties share their average rank), over the kept elements."""
    rows = []
    for index in range(a.shape[0]):
        x, y = a[index], b[index]
        if keep is not None:
            x, y = x[keep[index]], y[keep[index]]
        if x.size < 2:
            rows.append(np.nan)
            continue
        rx, ry = _average_ranks(x[None])[0], _average_ranks(y[None])[0]
        sx, sy = rx.std(), ry.std()
        rows.append(
            float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy)) if sx * sy > 0 else 0.0
        )
    return np.asarray(rows)


def ssim(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per instance, SSIM of H x W maps of |attribution| scaled to [0, 1]."""
    from skimage.metrics import structural_similarity

    def unit(map_: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        top = float(map_.max())
        return map_ / top if top > 0 else map_

    found = []
    for x, y in zip(a, b, strict=True):
        side = min(x.shape)
        window = min(7, side if side % 2 else side - 1)
        found.append(
            structural_similarity(unit(x), unit(y), data_range=1.0, win_size=max(3, window))  # type: ignore[no-untyped-call]
        )
    return np.asarray(found)


@dataclass(frozen=True)
class Comparison:
    depth: str  # "trained", or the layer randomized last (cascading) / alone (independent)
    spearman: float  # means over the instances
    spearman_abs: float
    spearman_nonzero: float
    spearman_abs_nonzero: float
    ssim: float | None  # images only


@dataclass(frozen=True)
class SanityReport:
    model: str
    method: str
    mode: str  # "cascading" or "independent"
    layers: list[str]
    rows: list[Comparison] = field(default_factory=list)
    maps: list[npt.NDArray[np.float64]] = field(default_factory=list)  # first instance, per depth


def _explain(
    model: Model, method: AnyMethod, params: Params, inputs: torch.Tensor, targets: torch.Tensor
) -> npt.NDArray[np.float64]:
    seeds = torch.zeros(inputs.shape[0], dtype=torch.int64)
    found = method.attribute(model, Batch(inputs, targets, seeds), params, 4096)
    return found.attributions.detach().double().cpu().numpy()


def _nonzero(inputs: torch.Tensor, maps: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Where the input is non-zero, in the maps' shape (a pixel of a one-channel map is
    non-zero when any of its channels is)."""
    found = inputs.detach().cpu().numpy() != 0
    if found.shape != maps.shape:
        found = found.any(axis=1, keepdims=True)
    return np.broadcast_to(found, maps.shape)


def _compare(
    depth: str,
    base: npt.NDArray[np.float64],
    other: npt.NDArray[np.float64],
    nonzero: npt.NDArray[np.bool_],
    image: bool,
) -> Comparison:
    n = base.shape[0]
    a, b = base.reshape(n, -1), other.reshape(n, -1)
    keep = nonzero.reshape(n, -1)
    similarity = None
    if image:
        planes_a = np.abs(base).sum(1) if base.ndim == 4 else np.abs(base)
        planes_b = np.abs(other).sum(1) if other.ndim == 4 else np.abs(other)
        similarity = float(np.nanmean(ssim(planes_a, planes_b)))
    return Comparison(
        depth=depth,
        spearman=float(np.nanmean(spearman(a, b))),
        spearman_abs=float(np.nanmean(spearman(np.abs(a), np.abs(b)))),
        spearman_nonzero=float(np.nanmean(spearman(a, b, keep))),
        spearman_abs_nonzero=float(np.nanmean(spearman(np.abs(a), np.abs(b), keep))),
        ssim=similarity,
    )


def randomization_test(
    model: Model,
    method: AnyMethod,
    params: Params,
    inputs: torch.Tensor,
    *,
    mode: str = "cascading",
    seed: int = 0,
) -> SanityReport:
    """Explain `inputs` (targets: the trained model's predictions) with the trained model and
    at each randomization depth; compare each with the trained model's maps."""
    with torch.no_grad():
        targets = model.module(inputs).argmax(1)
    layers = parameter_layers(model)
    base = _explain(model, method, params, inputs, targets)
    image = inputs.dim() == 4
    nonzero = _nonzero(inputs, base)
    report = SanityReport(model.name, method.name, mode, layers)
    report.rows.append(_compare("trained", base, base, nonzero, image))
    report.maps.append(base[0])
    for depth, layer in enumerate(layers):
        chosen = layers[: depth + 1] if mode == "cascading" else [layer]
        other = _explain(randomized(model, chosen, seed + depth), method, params, inputs, targets)
        report.rows.append(_compare(layer, base, other, nonzero, image))
        report.maps.append(other[0])
    return report


def model_comparison(
    model: Model,
    other: Model,
    method: AnyMethod,
    params: Params,
    inputs: torch.Tensor,
    depth: str,
) -> tuple[Comparison, npt.NDArray[np.float64]]:
    """Maps of `other` (e.g. the same network trained on permuted labels) against `model`'s,
    for `model`'s predictions; (the comparison, `other`'s map of the first instance)."""
    with torch.no_grad():
        targets = model.module(inputs).argmax(1)
    base = _explain(model, method, params, inputs, targets)
    found = _explain(other, method, params, inputs, targets)
    nonzero = _nonzero(inputs, base)
    return _compare(depth, base, found, nonzero, inputs.dim() == 4), found[0]


# A map kept for the PNG grid is at most this many pixels a side (a job's report carries them).
MAX_MAP_SIDE = 64
PERMUTED = "permuted labels"


@dataclass(frozen=True)
class SanityOutcome:
    """What `sidelight sanity` reports, run in the CLI's process or as a job: the comparisons
    per method and depth, the first instance's map per depth (for the grid), and the methods
    that failed the model config's threshold."""

    model: str
    version: str
    mode: str
    instances: int
    threshold: float
    threshold_over: str
    reports: list[SanityReport]
    failed: list[str]
    evaluations: int = 0  # rows the methods put through the model (all depths)
    stopped_by: str = ""  # run as a job: why it stopped before the end (no report then)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "mode": self.mode,
            "instances": self.instances,
            "threshold": self.threshold,
            "threshold_over": self.threshold_over,
            "methods": {
                r.method: {
                    "layers": r.layers,
                    "rows": [dataclasses.asdict(row) for row in r.rows],
                    "maps": [np.asarray(m, dtype=np.float32).tolist() for m in r.maps],
                }
                for r in self.reports
            },
            "failed": self.failed,
            "evaluations": self.evaluations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SanityOutcome:
        reports = [
            SanityReport(
                data["model"],
                method,
                data["mode"],
                list(entry["layers"]),
                [Comparison(**row) for row in entry["rows"]],
                [np.asarray(m, dtype=np.float64) for m in entry["maps"]],
            )
            for method, entry in data["methods"].items()
        ]
        return cls(
            data["model"],
            data["version"],
            data["mode"],
            data["instances"],
            data["threshold"],
            data["threshold_over"],
            reports,
            list(data["failed"]),
            data.get("evaluations", 0),
        )


def sanity_check(
    model: Model,
    version: str,
    methods: Sequence[str],
    inputs: torch.Tensor,
    *,
    mode: str = "cascading",
    seed: int = 0,
    permuted: Model | None = None,
    step: Callable[[float], None] = lambda fraction: None,
) -> SanityOutcome:
    """Run the randomization test of each method (and, given the network retrained on
    permuted labels, the data randomization test), then hold the methods the model config
    names to its threshold. `step` hears the fraction of methods done; it may raise to stop."""
    config: SanityConfig = model.config.sanity
    held = set(config.methods or methods)
    reports, failed = [], []
    evaluations = 0
    for index, name in enumerate(methods):
        method = method_for(model, name)
        params = parse_params(method, {})
        report = randomization_test(model, method, params, inputs, mode=mode, seed=seed)
        runs = len(report.rows) + (2 if permuted is not None else 0)
        evaluations += method.rows_per_instance(params) * int(inputs.shape[0]) * runs
        if permuted is not None:
            row, example = model_comparison(model, permuted, method, params, inputs, PERMUTED)
            report.rows.append(row)
            report.maps.append(example)
        report = replace(report, maps=[thumbnail(m) for m in report.maps])
        reports.append(report)
        last = report.rows[len(report.layers)]  # full cascading randomization
        final = last.spearman_abs_nonzero if config.over == "nonzero" else last.spearman_abs
        if mode == "cascading" and name in held and final > config.max_spearman_abs:
            failed.append(f"{name} ({final:.3f} > {config.max_spearman_abs}, {config.over})")
        step((index + 1) / len(methods))
    return SanityOutcome(
        model.name,
        version,
        mode,
        int(inputs.shape[0]),
        config.max_spearman_abs,
        config.over,
        reports,
        failed,
        evaluations,
    )


def thumbnail(map_: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """|map| summed over channels and average-pooled to at most MAX_MAP_SIDE a side (what
    the grid shows); a feature vector stays as it is."""
    if map_.ndim < 2:
        return map_
    plane = np.abs(map_).sum(0) if map_.ndim == 3 else np.abs(map_)
    factor = -(-max(plane.shape) // MAX_MAP_SIDE)
    if factor <= 1:
        return plane
    pooled = torch.nn.functional.avg_pool2d(
        torch.from_numpy(np.ascontiguousarray(plane))[None, None], factor, ceil_mode=True
    )
    result: npt.NDArray[np.float64] = pooled[0, 0].numpy()
    return result
