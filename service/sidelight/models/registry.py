"""The model repository: one folder per model, one sub-folder per version, as in Triton.

    repository/
      digits/
        config.yaml
        1/model.pt2          torch.export program
        2/model.pt           or a TorchScript archive
      breast_cancer/
        config.yaml
        baseline_mean.npy
        1/model.pt2
      churn/
        1/model.mar          a TorchServe archive (TorchScript or torch.export inside), its
                             config.yaml beside it or shipped inside

Version folders are positive integers; the latest is the largest. Everything is loaded and
checked at start, on every configured device. A wrong entry (a model folder) is logged with a
message that names the file and the field, and kept as unavailable with that error while the
others load: the start fails only when no model loads at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sidelight.errors import ConfigError, ModelNotFound, VersionNotFound, shown
from sidelight.models.config import ModelConfig
from sidelight.models.loaders import config_path, load_model, version_config
from sidelight.models.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ModelVersion:
    """One version, with a replica per device (the same weights on each)."""

    name: str
    version: str
    config: ModelConfig
    replicas: tuple[Model, ...]

    @property
    def primary(self) -> Model:
        return self.replicas[0]


class ModelRegistry:
    def __init__(
        self,
        versions: Sequence[ModelVersion],
        unavailable: Mapping[str, ConfigError] | None = None,
    ) -> None:
        self._models: dict[str, dict[str, ModelVersion]] = {}
        for entry in versions:
            self._models.setdefault(entry.name, {})[entry.version] = entry
        self._latest = {name: max(by_version, key=int) for name, by_version in self._models.items()}
        self._unavailable = dict(unavailable or {})

    @classmethod
    def load(
        cls,
        root: Path,
        devices: Sequence[torch.device],
        check: Callable[[Model], None] = lambda model: None,
    ) -> ModelRegistry:
        """Load every model under `root`; `check` vets each (e.g. its methods) or raises.
        A model folder that fails is kept in `unavailable` with its error."""
        if not root.is_dir():
            raise ConfigError(str(root), None, "model repository is not a directory")
        versions: list[ModelVersion] = []
        unavailable: dict[str, ConfigError] = {}
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if model_dir.name.startswith("."):
                continue
            try:
                versions.extend(_load_entry(model_dir, devices, check))
            except ConfigError as exc:
                log.error("model %s is unavailable: %s", model_dir.name, exc)
                unavailable[model_dir.name] = exc
        if not versions:
            if unavailable:
                first = next(iter(unavailable.values()))  # the one a single-model start needs
                problems = "; ".join(str(exc) for exc in unavailable.values())
                raise ConfigError(
                    first.path, first.field, f"{first.problem} (no model loads: {problems})"
                )
            raise ConfigError(str(root), None, "model repository holds no model")
        return cls(versions, unavailable)

    @property
    def unavailable(self) -> Mapping[str, ConfigError]:
        """Model folders that failed to load, by name, with the error that names why."""
        return dict(self._unavailable)

    def get(self, name: str, version: str = "") -> ModelVersion:
        by_version = self._models.get(name)
        if by_version is None:
            broken = self._unavailable.get(name)
            if broken is not None:
                raise ModelNotFound("model", f"model {shown(name)} is unavailable: {broken}")
            raise ModelNotFound("model", f"no model {shown(name)}; known: {sorted(self._models)}")
        entry = by_version.get(version or self._latest[name])
        if entry is None:
            raise VersionNotFound(
                "model_version",
                f"model {name!r} has no version {shown(version)}; "
                f"known: {sorted(by_version, key=int)}",
            )
        return entry

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models[name], key=int)

    def latest(self, name: str) -> str:
        return self._latest[name]

    def __iter__(self) -> Iterator[ModelVersion]:
        for name in self.names():
            yield from (self._models[name][v] for v in self.versions(name))


def _load_entry(
    model_dir: Path, devices: Sequence[torch.device], check: Callable[[Model], None]
) -> list[ModelVersion]:
    """Every version of one model folder, or the ConfigError of the first that fails."""
    version_dirs = [p for p in model_dir.iterdir() if p.is_dir()]
    for version_dir in version_dirs:
        if not (version_dir.name.isdigit() and int(version_dir.name) > 0):
            raise ConfigError(str(version_dir), None, "version folders are named 1, 2, 3, ...")
    if not version_dirs:
        raise ConfigError(str(model_dir), None, "has no version folder (1/model.pt2)")
    versions = []
    for version_dir in sorted(version_dirs, key=lambda p: int(p.name)):
        config = version_config(model_dir, version_dir.name)
        replicas = tuple(
            load_model(model_dir, version_dir.name, config, device) for device in devices
        )
        for replica in replicas:
            try:
                check(replica)
            except ConfigError as exc:
                where = config_path(model_dir, version_dir.name)
                raise ConfigError(where, exc.field, exc.problem) from exc
        versions.append(ModelVersion(model_dir.name, version_dir.name, config, replicas))
    return versions
