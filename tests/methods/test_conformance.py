"""Every method each model offers keeps the Method contract: shapes, per-instance targets,
the same answer alone or in a batch, in one call or in chunks, the same answer for the same
seed; bad params are refused naming the key; TorchScript refuses what needs modules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from method_support import (
    BIG,
    assert_close,
    attribute,
    fast_params,
    real_inputs,
    resolved,
    serve,
)
from sidelight.demo.build import (
    IMAGE_JOB_METHODS,
    IMAGE_METHODS,
    TABULAR_JOB_METHODS,
    TABULAR_METHODS,
)
from sidelight.errors import ConfigError, InvalidParams
from sidelight.methods.base import AttributionShape
from sidelight.methods.catalog import METHODS, check_model, parse_params
from sidelight.models.model import Background, Model
from sidelight.models.registry import ModelRegistry
from torch import nn

TORCHSCRIPT_METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"]
OFFERED = {
    "digits": IMAGE_METHODS + IMAGE_JOB_METHODS,
    "breast_cancer": TABULAR_METHODS + TABULAR_JOB_METHODS,
    "tiny_torchscript": TORCHSCRIPT_METHODS,
}
PAIRS = [(model, method) for model, methods in OFFERED.items() for method in methods]
pairs = pytest.mark.parametrize(("model_name", "method"), PAIRS)


def served(registry: ModelRegistry, name: str, method: str) -> Model:
    model = registry.get(name).primary
    assert method in model.config.methods
    return model


def run(model: Model, method: str, x: torch.Tensor, targets: Any, seeds: Any, **kw: Any) -> Any:
    return attribute(model, method, x, targets, seeds, **{**fast_params(method), **kw})


def test_the_suite_covers_every_method_each_model_offers(registry: ModelRegistry) -> None:
    for name, methods in OFFERED.items():
        assert sorted(registry.get(name).primary.config.methods) == sorted(methods), name
    assert {method for _, method in PAIRS} == set(METHODS)


@pairs
def test_shapes_outputs_and_targets(registry: ModelRegistry, model_name: str, method: str) -> None:
    model = served(registry, model_name, method)
    x = real_inputs(model, 3)
    result = run(model, method, x, [-1, 0, -1], [1, 2, 3])
    if METHODS[method].shape is AttributionShape.LAYER:
        assert result.attributions.shape == (3, 1, *x.shape[-2:])
    else:
        assert result.attributions.shape == x.shape
    assert bool(torch.isfinite(result.attributions).all())
    assert float(result.attributions.abs().max()) > 0
    with torch.no_grad():
        logits = model.module(x)
    assert_close(result.outputs, logits, 1e-6)
    assert torch.equal(result.targets, resolved(model.module, x, [-1, 0, -1]))
    assert result.evaluations_per_instance >= 1


@pairs
def test_per_instance_targets_are_respected(
    registry: ModelRegistry, model_name: str, method: str
) -> None:
    """One instance three times with three targets == that instance alone with each."""
    model = served(registry, model_name, method)
    x = real_inputs(model, 1).repeat(3, *[1] * len(model.input_shape))
    targets = [0, 1, model.num_classes - 1 if model.num_classes > 2 else -1]
    together = run(model, method, x, targets, [9, 9, 9]).attributions
    for k, target in enumerate(targets):
        alone = run(model, method, x[k : k + 1], [target], [9]).attributions
        assert_close(together[k : k + 1], alone, 1e-5)
    assert not torch.allclose(together[0], together[1])  # the target changes the answer


@pairs
def test_batch_equals_each_instance_alone(
    registry: ModelRegistry, model_name: str, method: str
) -> None:
    model = served(registry, model_name, method)
    x = real_inputs(model, 4)
    targets, seeds = [-1, 0, 1, -1], [101, 202, 303, 404]
    batch = run(model, method, x, targets, seeds)
    for k in range(4):
        alone = run(model, method, x[k : k + 1], targets[k : k + 1], seeds[k : k + 1])
        assert torch.equal(batch.targets[k : k + 1], alone.targets)
        assert_close(batch.attributions[k : k + 1], alone.attributions, 1e-5)


class RowCounter(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(int(x.shape[0]))
        return self.module(x)  # type: ignore[no-any-return]


@pairs
def test_chunks_equal_one_call(registry: ModelRegistry, model_name: str, method: str) -> None:
    """Through the service's path (outer split by run_chunked, inner by the method)."""
    model = served(registry, model_name, method)
    x = real_inputs(model, 5)
    targets, seeds = [-1, 0, 1, -1, 0], [5, 5, 6, 7, 8]
    params = fast_params(method)
    counting = RowCounter(model.module)  # TorchScript modules take no hooks: wrap instead
    small = serve(replace(model, module=counting), method, x, targets, seeds, 2, **params)
    rows = counting.rows
    whole = serve(model, method, x, targets, seeds, max_rows=BIG, **params)
    assert max(rows) <= 2, rows  # DeepLift too: its 2 rows are an instance and its baseline
    assert (small.targets == whole.targets).all()
    assert_close(small.attributions, whole.attributions, 1e-5)
    assert_close(small.outputs, whole.outputs, 1e-6)


FORWARD_FIRST = [(model, method) for model, method in PAIRS if METHODS[method].forward_first]


def test_the_methods_that_run_a_forward_pass_of_their_own_say_so() -> None:
    assert {"integrated_gradients", "deeplift", "smoothgrad", "vargrad"} <= {
        name for name, method in METHODS.items() if method.forward_first
    }


@pytest.mark.parametrize(("model_name", "method"), FORWARD_FIRST)
def test_chunked_batch_runs_its_outputs_pass_once_not_per_chunk(
    registry: ModelRegistry, model_name: str, method: str
) -> None:
    """Six instances, two rows per call: each chunk holds one instance. The outputs at the
    inputs come from one pass over the batch in calls of two rows, not from a one-row pass per
    chunk, and f(baseline) from the model's cache: no call of one row is left."""
    model = served(registry, model_name, method)
    x = real_inputs(model, 6)
    targets, seeds = [-1, 0, 1, -1, 0, 1], [5, 5, 6, 7, 8, 9]
    counting = RowCounter(model.module)
    counted = replace(model, module=counting)
    counted.baseline_outputs()
    counting.rows.clear()
    # Noisy copies: an even number, so that they too fill calls of two rows.
    params = {**fast_params(method), **({"samples": 4} if "samples" in fast_params(method) else {})}
    chunked = serve(counted, method, x, targets, seeds, 2, **params)
    assert 1 not in counting.rows, counting.rows
    assert counting.rows[:3] == [2, 2, 2]  # the outputs pass comes first
    whole = serve(model, method, x, targets, seeds, max_rows=BIG, **params)
    assert (chunked.targets == whole.targets).all()
    assert_close(chunked.outputs, whole.outputs, 1e-6)
    assert_close(chunked.attributions, whole.attributions, 1e-5)
    if whole.completeness_error is not None:
        assert_close(chunked.completeness_error, whole.completeness_error, 1e-5, atol=1e-4)


def test_baseline_outputs_are_the_modules_and_computed_once(registry: ModelRegistry) -> None:
    model = registry.get("digits").primary
    counting = RowCounter(model.module)
    counted = replace(model, module=counting)
    first = counted.baseline_outputs()
    again = counted.baseline_outputs()
    assert counting.rows == [1]
    assert again is first
    with torch.no_grad():
        expected = model.module(model.baseline().tensor)  # the module itself, not the cache
    assert torch.equal(first, expected)
    assert counted.baseline_outputs(model.config.default_baseline) is first


@pairs
def test_same_seed_same_result(registry: ModelRegistry, model_name: str, method: str) -> None:
    model = served(registry, model_name, method)
    x = real_inputs(model, 2)
    first = run(model, method, x, [-1, 0], [42, 43]).attributions
    again = run(model, method, x, [-1, 0], [42, 43]).attributions
    assert torch.equal(first, again)
    if METHODS[method].stochastic:
        other = run(model, method, x, [-1, 0], [44, 43]).attributions
        assert not torch.allclose(first[0], other[0])
        assert torch.equal(first[1], other[1])


BAD_VALUES: list[tuple[str, str, Any]] = [
    ("saliency", "abs", "maybe"),
    ("integrated_gradients", "n_steps", 1),
    ("integrated_gradients", "n_steps", 4097),
    ("integrated_gradients", "n_steps", 2.5),
    ("integrated_gradients", "integration", "simpson"),
    ("integrated_gradients", "baseline", 3),
    ("smoothgrad", "samples", 0),
    ("smoothgrad", "samples", 1025),
    ("smoothgrad", "noise_level", 0.0),
    ("vargrad", "noise_level", 1.5),
    ("vargrad", "base", "lrp"),
    ("vargrad", "seed", "abc"),
    ("deeplift", "baseline", ["zero"]),
    ("lrp", "epsilon", -1e-3),
    ("lrp", "epsilon", 1e4),
    ("grad_cam", "counterfactual", "sometimes"),
    ("grad_cam", "relu", {"on": True}),
]


@pytest.mark.parametrize(("method", "key", "value"), BAD_VALUES)
def test_bad_param_values_name_the_key(method: str, key: str, value: Any) -> None:
    with pytest.raises(InvalidParams) as raised:
        parse_params(METHODS[method], {key: value})
    assert raised.value.field == f"params.{key}"
    assert method in str(raised.value)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unknown_or_mistyped_params_name_the_key(method: str) -> None:
    with pytest.raises(InvalidParams) as raised:
        parse_params(METHODS[method], {"no_such_key": 1})
    assert raised.value.field == "params.no_such_key"
    for key in METHODS[method].params_type.model_fields:
        with pytest.raises(InvalidParams) as raised:
            parse_params(METHODS[method], {key: {"not": "a value"}})
        assert raised.value.field == f"params.{key}"
    assert parse_params(METHODS[method], {}) == METHODS[method].params_type()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_torchscript_model_offers_only_what_it_can(registry: ModelRegistry, method: str) -> None:
    """check_model on the TorchScript model configured with each method in turn: methods that
    need module rules, a layer or a classifier are refused, naming the method; so is a
    method for images (rise) on this tabular model."""
    tiny = registry.get("tiny_torchscript").primary
    rows = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    background = Background(rows, "test", rows.mean(0), rows.std(0, correction=0))
    model = replace(
        tiny,
        config=tiny.config.model_copy(update={"methods": [method]}),
        background=background,  # for lime's sampling statistics
    )
    if method == "rise":
        with pytest.raises(ConfigError, match="images"):
            check_model(model)
        return
    if METHODS[method].needs <= tiny.capabilities:
        check_model(model)  # accepted: and it runs
        x = real_inputs(model, 2)
        result = run(model, method, x, [-1, 0], [1, 2])
        assert result.attributions.shape == x.shape
        return
    with pytest.raises(ConfigError) as raised:
        check_model(model)
    assert raised.value.field == "methods"
    assert method in str(raised.value) and "torch.export" in str(raised.value)


@pytest.mark.parametrize("method", ["smoothgrad", "vargrad"])
def test_noise_tunnel_refuses_a_base_the_model_cannot_run(
    registry: ModelRegistry, method: str
) -> None:
    """Guided backprop's rules cannot attach to a TorchScript module: SmoothGrad over it
    returned plain-gradient SmoothGrad under the guided_backprop name."""
    tiny = registry.get("tiny_torchscript").primary
    x = real_inputs(tiny, 2)
    with pytest.raises(InvalidParams) as raised:
        run(tiny, method, x, [-1, 0], [1, 2], base="guided_backprop")
    assert raised.value.field == "params.base" and "module_rules" in str(raised.value)
    digits = registry.get("digits").primary  # a torch.export model does run it
    result = run(digits, method, real_inputs(digits, 1), [-1], [1], base="guided_backprop")
    assert result.attributions.shape == (1, 1, 8, 8)
