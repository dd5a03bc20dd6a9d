"""Load one model version from its folder: TorchScript (`model.pt`), torch.export (`model.pt2`),
ONNX (`model.onnx`, forward passes only), a TorchServe archive (`model.mar`) holding one of
the first two, or a remote endpoint (`remote.yaml`, forward passes only, on another server).

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
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from sidelight.errors import ConfigError
from sidelight.models.config import ModelConfig, load_config
from sidelight.models.mar import CONFIG, INDEX_TO_NAME, MarArchive
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
MAR_FILE = "model.mar"  # a TorchServe archive of a TorchScript or torch.export file

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


def _model_file(version_dir: Path) -> Path:
    names = [*MODEL_FILES, MAR_FILE]
    present = [version_dir / name for name in names if (version_dir / name).is_file()]
    if len(present) != 1:
        raise ConfigError(
            str(version_dir),
            None,
            f"needs exactly one of {sorted(names)}, found {[p.name for p in present]}",
        )
    return present[0]


def version_config(model_dir: Path, version: str) -> ModelConfig:
    """The config of `model_dir/version`: `model_dir/config.yaml`, or for a TorchServe archive
    without one beside it, the `config.yaml` shipped inside; an archive's index_to_name.json
    gives the labels a config leaves out (and must agree with those it gives)."""
    beside = model_dir / "config.yaml"
    path = _model_file(model_dir / version)
    if path.name != MAR_FILE:
        return load_config(beside)
    archive = MarArchive.open(path)
    names = None if archive.labels is None else (f"{path}:{INDEX_TO_NAME}", archive.labels)
    if beside.is_file():
        return load_config(beside, class_names=names)
    text = archive.config_text()
    if text is None:
        raise ConfigError(
            str(beside), None, f"is missing, and {path} ships no {CONFIG} among its extra files"
        )
    return load_config(Path(f"{path}:{CONFIG}"), text=text, class_names=names)


def config_path(model_dir: Path, version: str) -> str:
    """Where `version_config` read the config from, for messages."""
    path = _model_file(model_dir / version)
    archive = MarArchive.open(path) if path.name == MAR_FILE else None
    return _SideFiles(model_dir, archive).config()


class _SideFiles:
    """Where the files a config names (baselines, background) are read: beside config.yaml,
    in the model folder or inside the archive that ships it."""

    def __init__(self, model_dir: Path, archive: MarArchive | None) -> None:
        self._dir = model_dir
        self._archive = archive if not (model_dir / "config.yaml").is_file() else None

    def where(self, name: str) -> str:
        return f"{self._archive.path}:{name}" if self._archive else str(self._dir / name)

    def config(self) -> str:
        return self.where("config.yaml")

    def open(self, name: str) -> BinaryIO:
        if self._archive is not None:
            return self._archive.read_side_file(name)
        return (self._dir / name).open("rb")

    def load_npy(self, name: str) -> npt.NDArray[Any]:
        try:
            with self.open(name) as stream:
                array: npt.NDArray[Any] = np.load(stream, allow_pickle=False)
                return array
        except (OSError, ValueError, ConfigError) as exc:
            raise ConfigError(
                self.where(name), None, f"is not a readable .npy file ({exc})"
            ) from exc


def _load_torchscript(source: Path | BinaryIO, device: torch.device) -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript in favour of torch.export; we still serve it.
        warnings.simplefilter("ignore", DeprecationWarning)
        where = str(source) if isinstance(source, Path) else source
        module: nn.Module = torch.jit.load(where, map_location=device)  # type: ignore[no-untyped-call]
        return module


def _load_export(
    source: Path | BinaryIO, config: ModelConfig, device: torch.device
) -> tuple[nn.Module, torch.Tensor | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations inside torch
        program = torch.export.load(str(source) if isinstance(source, Path) else source)
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


def _baselines(files: _SideFiles, config: ModelConfig, device: torch.device) -> dict[str, Baseline]:
    shape = tuple(config.input.shape)
    dtype = _DTYPES[config.input.dtype]
    baselines = {}
    for name, spec in config.baselines.items():
        if spec.file is not None:
            array = files.load_npy(spec.file)
            if tuple(array.shape) != shape:
                raise ConfigError(
                    files.config(),
                    f"baselines.{name}.file",
                    f"{spec.file} has shape {list(array.shape)}, the input is {list(shape)}",
                )
            tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
        else:
            tensor = torch.full(shape, float(spec.value or 0.0))
        tensor = tensor.to(device=device, dtype=dtype).unsqueeze(0)
        baselines[name] = Baseline(name=name, tensor=tensor, digest=tensor_digest(tensor))
    return baselines


def _background(files: _SideFiles, config: ModelConfig, device: torch.device) -> Background | None:
    if config.background is None:
        return None
    array = files.load_npy(config.background)
    shape = tuple(config.input.shape)
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape or array.shape[0] < 1:
        raise ConfigError(
            files.config(),
            "background",
            f"{config.background} has shape {list(array.shape)}; expected [K, "
            f"{', '.join(map(str, shape))}] with K >= 1",
        )
    if not np.isfinite(array).all():
        raise ConfigError(files.config(), "background", "holds NaN or Inf")
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    tensor = tensor.to(device=device, dtype=_DTYPES[config.input.dtype])
    return Background(
        tensor=tensor,
        digest=tensor_digest(tensor),
        mean=tensor.mean(0),
        std=tensor.std(0, correction=0),
    )


def _load_module(
    source: Path | BinaryIO, fmt: ModelFormat, config: ModelConfig, device: torch.device
) -> tuple[nn.Module, torch.Tensor | None]:
    """(module, CAM classifier weights) of a model file, or of the model read from an archive."""
    if fmt is ModelFormat.TORCHSCRIPT:
        return _load_torchscript(source, device), None
    if fmt is ModelFormat.ONNX and isinstance(source, Path):
        return OnnxModule(source, device), None
    return _load_export(source, config, device)


def load_model(model_dir: Path, version: str, config: ModelConfig, device: torch.device) -> Model:
    """Load `model_dir/version`, check it against `config` with a forward pass on `device`."""
    path = _model_file(model_dir / version)
    if path.name == REMOTE_FILE:
        return _load_remote(model_dir, version, path, config, device)
    archive = MarArchive.open(path) if path.name == MAR_FILE else None
    files = _SideFiles(model_dir, archive)
    config_path = files.config()
    what = f"{archive.format.value} ({archive.serialized_file})" if archive else path.name
    fmt = archive.format if archive else MODEL_FILES[path.name]
    source = archive.read_model() if archive else path  # the archive names what is wrong
    try:
        module, classifier = _load_module(source, fmt, config, device)
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
            f"has {len(config.labels)} labels{_labels_source(archive, config)} but the model "
            f"({what}) outputs {num_classes} classes",
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
        baselines=_baselines(files, config, device),
        num_classes=num_classes,
        file_digest=file_digest(path),  # a .mar: the archive's, the file TorchServe serves
        capabilities=frozenset(capabilities),
        background=_background(files, config, device),
    )


def _load_remote(
    model_dir: Path, version: str, path: Path, config: ModelConfig, device: torch.device
) -> Model:
    """A model served elsewhere: remote.yaml read and checked, no call made (see above)."""
    remote = load_remote_config(path)
    files = _SideFiles(model_dir, None)
    return Model(
        name=model_dir.name,
        version=version,
        config=config,
        device=device,
        format=ModelFormat.REMOTE,
        module=open_remote(remote, model_dir.name, len(config.labels)),
        layer=None,
        classifier_weight=None,
        baselines=_baselines(files, config, device),
        num_classes=len(config.labels),
        file_digest=file_digest(path),  # remote.yaml's: Sidelight never sees the weights
        capabilities=frozenset(),
        background=_background(files, config, device),
    )


def _labels_source(archive: MarArchive | None, config: ModelConfig) -> str:
    if archive is not None and archive.labels == config.labels:
        return f" (the class names of {archive.path}:{INDEX_TO_NAME})"
    return ""


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
