"""Rebuild leaf modules in an exported program's graph, so that module-based rules apply.

A `torch.export` program holds aten calls (`aten.conv2d`, `aten.relu`, ...), not modules. Captum's
GuidedBackprop, DeepLift and LRP attach their rules to `nn.ReLU`, `nn.Conv2d`, ... instances,
and its layer methods hook a module's output. This pass replaces each supported aten call by a
call to a fresh module of the matching type that shares the program's parameters, so the forward
computation is unchanged (tested bit for bit) while the rules find their modules. One module
per call site: a ReLU the original model reused becomes two modules, which DeepLift requires.

It also marks the output of the configured CAM layer with a `LayerMarker` named
`LAYER_MARKER`, located through the `nn_module_stack` metadata that export keeps on every node.

No maintained library maps aten graphs back to modules (Zennit and Captum both work on
modules), hence this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr._utils.custom_modules import Addition_Module
from torch import fx, nn

from sidelight.errors import ConfigError

LAYER_MARKER = "sidelight_cam_layer"

_aten = torch.ops.aten


class LayerMarker(nn.Module):
    """Passes the CAM layer's output through, so that hooks can find it. It returns a view,
    not its input itself: LRP hooks a module's input and output tensors separately."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)


def _param(gm: fx.GraphModule, node: Any) -> nn.Parameter | torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        raise _Unsupported
    target = str(node.target)
    return gm.get_parameter(target) if _is_param(gm, target) else gm.get_buffer(target)


def _is_param(gm: fx.GraphModule, target: Any) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


class _Unsupported(Exception):
    """This call keeps its functional form (its arguments are not plain parameters)."""


def _arg(args: tuple[Any, ...], i: int, default: Any) -> Any:
    return args[i] if len(args) > i else default


def _conv2d(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
    weight = _param(gm, args[1])
    bias = _param(gm, _arg(args, 2, None))
    assert weight is not None
    groups = int(_arg(args, 6, 1))
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        (int(weight.shape[2]), int(weight.shape[3])),
        stride=_arg(args, 3, 1),
        padding=_arg(args, 4, 0),
        dilation=_arg(args, 5, 1),
        groups=groups,
        bias=bias is not None,
        device="meta",
    )
    conv.weight = weight
    if bias is not None:
        conv.bias = bias
    return conv, (args[0],)


def _linear(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
    weight = _param(gm, args[1])
    bias = _param(gm, _arg(args, 2, None))
    assert weight is not None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = weight
    if bias is not None:
        linear.bias = bias  # type: ignore[assignment]
    return linear, (args[0],)


def _batch_norm(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
    x, weight, bias, mean, var, training, _momentum, eps = args[:8]
    if training:
        raise _Unsupported
    norm_weight, norm_bias = _param(gm, weight), _param(gm, bias)
    running_mean, running_var = _param(gm, mean), _param(gm, var)
    assert running_mean is not None and running_var is not None
    # aten.batch_norm serves every rank; the module classes check theirs (BatchNorm1d in an
    # MLP rebuilt as BatchNorm2d failed on its 2-D input, so the model could not load).
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(
        val.dim() if isinstance(val, torch.Tensor) else -1
    )
    if kind is None:
        raise _Unsupported
    norm = kind(running_mean.shape[0], eps=eps, affine=norm_weight is not None)
    if norm_weight is not None:
        norm.weight = norm_weight  # type: ignore[assignment]
        norm.bias = norm_bias  # type: ignore[assignment]
    norm.running_mean = running_mean
    norm.running_var = running_var
    norm.eval()
    return norm, (x,)


def _unary(
    factory: Callable[[tuple[Any, ...]], nn.Module],
) -> Callable[..., tuple[nn.Module, tuple[Any, ...]]]:
    """For ops whose only tensor is the first argument; `factory` reads the others."""

    def build(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
        return factory(args), (args[0],)

    return build


def _softmax(args: tuple[Any, ...]) -> nn.Module:
    if _arg(args, 2, None) is not None:
        raise _Unsupported  # a dtype cast inside softmax
    return nn.Softmax(dim=args[1])


def _elu(args: tuple[Any, ...]) -> nn.Module:
    if _arg(args, 2, 1) != 1 or _arg(args, 3, 1) != 1:
        raise _Unsupported  # SELU-style scales
    return nn.ELU(alpha=_arg(args, 1, 1.0))


def _add(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
    if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args):
        raise _Unsupported  # x + constant, or alpha != 1
    return Addition_Module(), args


def _max_pool2d(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
    kernel = args[1]
    return nn.MaxPool2d(
        kernel,
        stride=_arg(args, 2, None) or kernel,
        padding=_arg(args, 3, 0),
        dilation=_arg(args, 4, 1),
        ceil_mode=_arg(args, 5, False),
    ), (args[0],)


def _avg_pool2d(gm: fx.GraphModule, args: tuple[Any, ...]) -> tuple[nn.Module, tuple[Any, ...]]:
    kernel = args[1]
    return nn.AvgPool2d(
        kernel,
        stride=_arg(args, 2, None) or kernel,
        padding=_arg(args, 3, 0),
        ceil_mode=_arg(args, 4, False),
        count_include_pad=_arg(args, 5, True),
        divisor_override=_arg(args, 6, None),  # dropped, it changed the model's outputs
    ), (args[0],)


_REBUILDERS: dict[Any, Callable[..., tuple[nn.Module, tuple[Any, ...]]]] = {
    _aten.conv2d.default: _conv2d,
    _aten.linear.default: _linear,
    _aten.batch_norm.default: _batch_norm,
    _aten.relu.default: _unary(lambda args: nn.ReLU()),
    _aten.relu_.default: _unary(lambda args: nn.ReLU()),
    _aten.sigmoid.default: _unary(lambda args: nn.Sigmoid()),
    _aten.tanh.default: _unary(lambda args: nn.Tanh()),
    _aten.elu.default: _unary(_elu),
    _aten.leaky_relu.default: _unary(lambda args: nn.LeakyReLU(_arg(args, 1, 0.01))),
    _aten.softmax.int: _unary(_softmax),
    _aten.max_pool2d.default: _max_pool2d,
    _aten.avg_pool2d.default: _avg_pool2d,
    _aten.adaptive_avg_pool2d.default: _unary(lambda args: nn.AdaptiveAvgPool2d(args[1])),
    _aten.add.Tensor: _add,
}


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return str(list(stack.values())[-1][0]) if stack else ""


def _in_module(node: fx.Node, path: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(entry[0] == path for entry in stack.values())


def modularize(program: torch.export.ExportedProgram, *, layer: str | None) -> fx.GraphModule:
    """A plain GraphModule computing `program`, with leaf modules and the layer marker.

    The result takes positional tensors and returns a tensor (single-output programs), so that
    Captum's forward pre-hooks can rewrite its inputs (DeepLift concatenates baselines).
    """
    gm = program.module()
    graph = gm.graph
    names: dict[str, int] = {}

    def install(path: str, module: nn.Module) -> str:
        base = f"{path.replace('.', '_') or 'model'}_{type(module).__name__.lower()}"
        count = names.get(base, 0) + 1
        names[base] = count
        name = base if count == 1 else f"{base}_{count}"
        gm.add_submodule(name, module)
        return name

    layer_output: fx.Node | None = None
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)  # shape guards: requests are validated before they get here
            continue
        if layer is not None and _in_module(node, layer):
            layer_output = node
        rebuild = _REBUILDERS.get(node.target) if node.op == "call_function" else None
        if rebuild is None or node.kwargs:
            continue
        try:
            module, args = rebuild(gm, node.args)
        except _Unsupported:
            continue
        with graph.inserting_before(node):
            call = graph.call_module(install(_module_path(node), module), args)
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        if layer_output is node:
            layer_output = call
        graph.erase_node(node)

    if layer is not None:
        if layer_output is None:
            raise ConfigError("config.yaml", "cam.layer", f"the model has no module {layer!r}")
        gm.add_submodule(LAYER_MARKER, LayerMarker())
        with graph.inserting_after(layer_output):
            marked = graph.call_module(LAYER_MARKER, (layer_output,))
        layer_output.replace_all_uses_with(marked, delete_user_cb=lambda user: user is not marked)

    output = next(node for node in graph.nodes if node.op == "output")
    results = output.args[0]
    if isinstance(results, (tuple, list)):
        if len(results) != 1:
            raise ConfigError("model", None, f"has {len(results)} outputs; Sidelight needs one")
        output.args = (results[0],)
    # The exported module's codegen flattens pytrees and checks input specs in a pre-hook;
    # a plain CodeGen gives a module that takes positional tensors, as Captum expects.
    graph._codegen = fx.graph.CodeGen()
    graph.eliminate_dead_code()
    return fx.GraphModule(gm, graph)
