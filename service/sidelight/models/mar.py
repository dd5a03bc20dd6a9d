"""TorchServe model archives (`.mar`), read without running anything they hold.

A `.mar` is a zip written by `torch-model-archiver`: `MAR-INF/MANIFEST.json` names the
serialized model (`model.serializedFile`), the handler, and for an eager model the Python file
that defines it (`model.modelFile`); every `--extra-files` entry sits at the archive's root.
Sidelight takes the serialized file when it is TorchScript (`.pt`, no model file) or a
`torch.export` program (`.pt2`), and refuses eager models: their weights load only through the
archive's own code and a pickle. From the extra files it takes `index_to_name.json` (class
names) and `config.yaml` (the model's Sidelight config, when the model folder has none).

Members are read into memory, never extracted: no path from the archive reaches the disk, and
each read is bounded by its declared size and a limit, whatever the zip's headers claim.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sidelight.errors import ConfigError
from sidelight.models.model import ModelFormat

MANIFEST = "MAR-INF/MANIFEST.json"
INDEX_TO_NAME = "index_to_name.json"
CONFIG = "config.yaml"
MAX_MODEL_BYTES = 8 << 30  # the serialized model
MAX_SIDE_FILE_BYTES = 256 << 20  # manifest, config, class names, baselines, background
_FORMATS = {".pt": ModelFormat.TORCHSCRIPT, ".pt2": ModelFormat.TORCH_EXPORT}


@dataclass(frozen=True)
class MarArchive:
    """An opened archive whose manifest names a model Sidelight can load."""

    path: Path
    model_name: str
    serialized_file: str
    format: ModelFormat  # TORCHSCRIPT or TORCH_EXPORT
    labels: list[str] | None  # from index_to_name.json, in class order

    @classmethod
    def open(cls, path: Path) -> MarArchive:
        manifest = _json(path, MANIFEST)
        model = manifest.get("model") if isinstance(manifest, dict) else None
        if not isinstance(model, dict):
            raise ConfigError(str(path), MANIFEST, "has no 'model' object")
        model_file = model.get("modelFile")
        serialized = model.get("serializedFile")
        if model_file:
            raise ConfigError(
                str(path),
                "model.modelFile",
                f"is an eager model ({model_file} + a state dict): loading it would run the "
                "archive's code and unpickle its weights; archive a TorchScript (.pt) or "
                "torch.export (.pt2) file instead",
            )
        if not isinstance(serialized, str) or not serialized:
            raise ConfigError(
                str(path), "model.serializedFile", "is missing: the archive names no model file"
            )
        fmt = _FORMATS.get(PurePosixPath(serialized).suffix)
        if fmt is None:
            raise ConfigError(
                str(path),
                "model.serializedFile",
                f"{serialized!r} is neither TorchScript (.pt) nor torch.export (.pt2)",
            )
        if not has_member(path, serialized):
            raise ConfigError(
                str(path), "model.serializedFile", f"{serialized!r} is not in the archive"
            )
        labels = _labels(path) if has_member(path, INDEX_TO_NAME) else None
        return cls(path, str(model.get("modelName", "")), serialized, fmt, labels)

    def read_model(self) -> io.BytesIO:
        return io.BytesIO(read_member(self.path, self.serialized_file, MAX_MODEL_BYTES))

    def config_text(self) -> str | None:
        """The `config.yaml` shipped among the extra files, if any."""
        if not has_member(self.path, CONFIG):
            return None
        return read_member(self.path, CONFIG, MAX_SIDE_FILE_BYTES).decode("utf-8", "replace")

    def read_side_file(self, name: str) -> io.BytesIO:
        return io.BytesIO(read_member(self.path, name, MAX_SIDE_FILE_BYTES))


def _zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(str(path), None, f"is not a model archive (not a zip: {exc})") from exc


def has_member(path: Path, name: str) -> bool:
    with _zip(path) as archive:
        return name in archive.NameToInfo


def read_member(path: Path, name: str, limit: int) -> bytes:
    """The bytes of `name`, refusing more than `limit` (declared or actual)."""
    with _zip(path) as archive:
        info = archive.NameToInfo.get(name)
        if info is None:
            raise ConfigError(str(path), name, "is not in the archive")
        if info.file_size > limit:
            raise ConfigError(str(path), name, f"is {info.file_size} bytes, over {limit}")
        try:
            with archive.open(info) as stream:
                data = stream.read(limit + 1)
        except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
            raise ConfigError(str(path), name, f"cannot be read: {exc}") from exc
    if len(data) > limit:  # a header that understates the size (a zip bomb)
        raise ConfigError(str(path), name, f"inflates to more than {limit} bytes")
    return data


def _json(path: Path, name: str) -> Any:
    if not has_member(path, name):
        raise ConfigError(str(path), name, "is missing: not a torch-model-archiver archive")
    try:
        return json.loads(read_member(path, name, MAX_SIDE_FILE_BYTES))
    except ValueError as exc:
        raise ConfigError(str(path), name, f"is not valid JSON: {exc}") from exc


def _labels(path: Path) -> list[str]:
    return class_names(_json(path, INDEX_TO_NAME), f"{path}", INDEX_TO_NAME)


def class_names(raw: Any, path: str, name: str = INDEX_TO_NAME) -> list[str]:
    """Class names from {"0": "cat", ...} or ImageNet's {"0": ["n01440764", "tench"], ...}."""
    expected = [str(i) for i in range(len(raw))] if isinstance(raw, dict) else []
    if not isinstance(raw, dict) or sorted(raw, key=_index) != expected:
        raise ConfigError(path, name, 'must map every class index 0..K-1 to a name: {"0": ...}')
    labels = []
    for key in expected:
        value = raw[key]
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ConfigError(path, f"{name}: {key}", "is not a class name")
        labels.append(label)
    return labels


def _index(key: str) -> int:
    return int(key) if key.isdigit() else -1
