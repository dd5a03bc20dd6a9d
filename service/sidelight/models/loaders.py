"""Load one model version from its folder: TorchScript (`model.pt`), torch.export (`model.pt2`),
ONNX (`model.onnx`, forward passes only) or a remote endpoint (`remote.yaml`, forward passes
only, on another server).

No pickle: TorchScript archives hold code and tensors, torch.export archives a serialized graph
and weights read with `weights_only`, ONNX files a protobuf graph. The loaded module is checked
with a forward pass on the device before it is offered (output shape against the labels, CAM
layer shape).

A remote model is not probed: Sidelight starts while its endpoint is down, and the endpoint may
answer later. Its number of classes is config.yaml's labels; every answer is checked against
them (sidelight.models.remote.client), and the server's health probe reports the endpoint.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sidelight.errors import ConfigError
from sidelight.models.config import ModelConfig
from sidelight.models.model import Background, Baseline, Capability, Model, ModelFormat
from sidelight.models.modularize import LAYER_MARKER, modularize
from sidelight.models.onnx import OnnxModule
from sidelight.models.remote.config import REMOTE_FILE, load_remote_config
from sidelight.models.remote.module import open_remote

MODEL_FILES = {
    "model.pt": ModelFormat.TORCHSCRIPT,
    "model.pt2": ModelFormat.TORCH_EXPORT,
    "model.onnx": ModelFormat.ONNX,
    REMOTE_FILE: ModelFormat.REMOTE,
}

_DTYPES = {"FP32": torch.float32, "FP16": torch.float16, "FP64": torch.float64}


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(array.astype("<f4").tobytes()).hexdigest()


def _model_file(version_dir: Path) -> tuple[Path, ModelFormat]:
    found = [(version_dir / name, fmt) for name, fmt in MODEL_FILES.items()]
    present = [(path, fmt) for path, fmt in found if path.is_file()]
    if len(present) != 1:
        raise ConfigError(
            str(version_dir),
            None,
            f"needs exactly one of {sorted(MODEL_FILES)}, found {[p.name for p, _ in present]}",
        )
    return present[0]


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript in favour of torch.export; we still serve it.
        warnings.simplefilter("ignore", DeprecationWarning)
        module: nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        return module


def _load_export(
    path: Path, config: ModelConfig, device: torch.device
) -> tuple[nn.Module, torch.Tensor | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations inside torch
        program = torch.export.load(str(path))
    layer = config.cam.layer if config.cam else None
    module = modularize(program, layer=layer)
    classifier = None
    if config.cam and config.cam.classifier:
        key = f"{config.cam.classifier}.weight"
        if key not in program.state_dict:
            raise ConfigError(
                "config.yaml", "cam.classifier", f"the model has no parameter {key!r}"
            )
        classifier = program.state_dict[key].detach().to(device)
    return module.to(device), classifier


def _baselines(model_dir: Path, config: ModelConfig, device: torch.device) -> dict[str, Baseline]:
    shape = tuple(config.input.shape)
    dtype = _DTYPES[config.input.dtype]
    baselines = {}
    for name, spec in config.baselines.items():
        if spec.file is not None:
            path = model_dir / spec.file
            try:
                array = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ConfigError(str(path), None, f"is not a readable .npy file ({exc})") from exc
            if tuple(array.shape) != shape:
                raise ConfigError(
                    str(model_dir / "config.yaml"),
                    f"baselines.{name}.file",
                    f"{spec.file} has shape {list(array.shape)}, the input is {list(shape)}",
                )
            tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
        else:
            tensor = torch.full(shape, float(spec.value or 0.0))
        tensor = tensor.to(device=device, dtype=dtype).unsqueeze(0)
        baselines[name] = Baseline(name=name, tensor=tensor, digest=tensor_digest(tensor))
    return baselines


def _background(model_dir: Path, config: ModelConfig, device: torch.device) -> Background | None:
    if config.background is None:
        return None
    path = model_dir / config.background
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), None, f"is not a readable .npy file ({exc})") from exc
    shape = tuple(config.input.shape)
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape or array.shape[0] < 1:
        raise ConfigError(
            str(model_dir / "config.yaml"),
            "background",
            f"{config.background} has shape {list(array.shape)}; expected [K, "
            f"{', '.join(map(str, shape))}] with K >= 1",
        )
    if not np.isfinite(array).all():
        raise ConfigError(str(model_dir / "config.yaml"), "background", "holds NaN or Inf")
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    tensor = tensor.to(device=device, dtype=_DTYPES[config.input.dtype])
    return Background(
        tensor=tensor,
        digest=tensor_digest(tensor),
        mean=tensor.mean(0),
        std=tensor.std(0, correction=0),
    )


def load_model(model_dir: Path, version: str, config: ModelConfig, device: torch.device) -> Model:
    """Load `model_dir/version`, check it against `config` with a forward pass on `device`."""
    config_path = str(model_dir / "config.yaml")
    path, fmt = _model_file(model_dir / version)
    if fmt is ModelFormat.REMOTE:
        return _load_remote(model_dir, version, path, config, device)
    try:
        if fmt is ModelFormat.TORCHSCRIPT:
            module, classifier = _load_torchscript(path, device), None
        elif fmt is ModelFormat.ONNX:
            module, classifier = OnnxModule(path, device), None
        else:
            module, classifier = _load_export(path, config, device)
    except ConfigError as exc:
        raise ConfigError(config_path, exc.field, exc.problem) from exc
    except Exception as exc:  # a corrupt or foreign file: say which, keep the cause
        raise ConfigError(str(path), None, f"cannot be loaded as {fmt.value}: {exc}") from exc
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)

    layer = (
        module.get_submodule(LAYER_MARKER)
        if fmt is ModelFormat.TORCH_EXPORT and config.cam
        else None
    )
    num_classes, layer_shape = _probe(module, layer, config, device, config_path)
    if num_classes != len(config.labels):
        raise ConfigError(
            config_path,
            "labels",
            f"has {len(config.labels)} labels but the model outputs {num_classes} classes",
        )
    if classifier is not None and (
        classifier.dim() != 2
        or classifier.shape[0] != num_classes
        or layer_shape is None
        or classifier.shape[1] != layer_shape[1]
    ):
        raise ConfigError(
            config_path,
            "cam.classifier",
            f"weight of shape {list(classifier.shape)} does not map the layer's "
            f"{layer_shape[1] if layer_shape else '?'} channels to {num_classes} classes",
        )
    capabilities = set() if fmt is ModelFormat.ONNX else {Capability.GRADIENTS}
    if fmt is ModelFormat.TORCH_EXPORT:
        capabilities.add(Capability.MODULE_RULES)
    if layer is not None and layer_shape is not None and len(layer_shape) == 4:
        capabilities.add(Capability.LAYER)
        if classifier is not None:
            capabilities.add(Capability.CLASSIFIER)
    return Model(
        name=model_dir.name,
        version=version,
        config=config,
        device=device,
        format=fmt,
        module=module,
        layer=layer,
        classifier_weight=classifier,
        baselines=_baselines(model_dir, config, device),
        num_classes=num_classes,
        file_digest=file_digest(path),
        capabilities=frozenset(capabilities),
        background=_background(model_dir, config, device),
    )


def _load_remote(
    model_dir: Path, version: str, path: Path, config: ModelConfig, device: torch.device
) -> Model:
    """A model served elsewhere: remote.yaml read and checked, no call made (see above)."""
    remote = load_remote_config(path)
    module = open_remote(remote, model_dir.name, len(config.labels))
    return Model(
        name=model_dir.name,
        version=version,
        config=config,
        device=device,
        format=ModelFormat.REMOTE,
        module=module,
        layer=None,
        classifier_weight=None,
        baselines=_baselines(model_dir, config, device),
        num_classes=len(config.labels),
        file_digest=file_digest(path),
        capabilities=frozenset(),
        background=_background(model_dir, config, device),
    )


def _probe(
    module: nn.Module,
    layer: nn.Module | None,
    config: ModelConfig,
    device: torch.device,
    config_path: str,
) -> tuple[int, tuple[int, ...] | None]:
    """Run two zero instances through the model: (number of classes, CAM layer output shape)."""
    seen: list[tuple[int, ...]] = []
    hook = (
        layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
        if layer is not None
        else None
    )
    probe = torch.zeros((2, *config.input.shape), dtype=_DTYPES[config.input.dtype], device=device)
    try:
        with torch.no_grad():
            outputs = module(probe)
    except Exception as exc:
        raise ConfigError(
            config_path, "input.shape", f"the model cannot run on {list(probe.shape)}: {exc}"
        ) from exc
    finally:
        if hook is not None:
            hook.remove()
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2 or outputs.shape[0] != 2:
        shape = list(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs)
        raise ConfigError(config_path, "output", f"the model returns {shape}, not N x classes")
    return int(outputs.shape[1]), (seen[-1] if seen else None)
