"""The schema of a model's `config.yaml`, and its loading with errors that name file and field.

description: Handwritten digits, 8x8, CNN with global average pooling
task: image_classification          # or tabular_classification
input:
  shape: [1, 8, 8]                  # one instance, without the batch dimension
  dtype: FP32
  range: [0.0, 1.0]                 # values outside are refused
output: logits                      # or probabilities: what the model returns
labels: ["0", "1", ...]             # one per output class (a .mar: or its index_to_name.json)
cam:                                # for the CAM family of methods
  layer: features                   # module whose output is the last spatial feature map
  classifier: fc                    # the linear layer after global average pooling (cam)
baselines:                          # named reference inputs for IG, DeepLIFT, ...
  zero: {value: 0.0}
  mean: {file: baseline_mean.npy}   # relative to the model folder; .npy, no pickle
default_baseline: zero
background: background.npy          # training rows for kernel_shap and lime (optional)
methods: [saliency, integrated_gradients, grad_cam]
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sidelight.errors import ConfigError

Schema = TypeVar("Schema", bound=BaseModel)


class Task(StrEnum):
    IMAGE_CLASSIFICATION = "image_classification"
    TABULAR_CLASSIFICATION = "tabular_classification"


class OutputKind(StrEnum):
    LOGITS = "logits"
    PROBABILITIES = "probabilities"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Strict):
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=7)]
    dtype: Literal["FP32", "FP16", "FP64"] = "FP32"
    range: tuple[float, float] | None = None
    feature_names: list[str] | None = None

    @field_validator("range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"{list(value)} must be [min, max] with min < max")
        return value

    @field_validator("feature_names")
    @classmethod
    def _one_per_feature(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        shape = info.data.get("shape")
        if value is not None and shape and len(value) != shape[-1]:
            raise ValueError(f"has {len(value)} names for {shape[-1]} features")
        return value


class CamConfig(_Strict):
    layer: str = Field(min_length=1)
    classifier: str | None = None


class BaselineConfig(_Strict):
    value: float | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BaselineConfig:
        if (self.value is None) == (self.file is None):
            raise ValueError("give exactly one of value or file")
        return self


class SanityConfig(_Strict):
    """What `sidelight sanity` holds this model's methods to."""

    # After full cascading randomization, a method's maps must differ from the trained
    # model's: mean Spearman of |attributions| at most this (Adebayo et al. 2018) ...
    max_spearman_abs: float = Field(default=0.5, ge=-1.0, le=1.0)
    # ... over the elements where the input is non-zero (a map multiplied by the input keeps
    # the input's zeros whatever the weights), or over all of them.
    over: Literal["nonzero", "all"] = "nonzero"
    # The methods held to it (default: every method the model offers that the check runs).
    methods: list[str] | None = None


class ModelConfig(_Strict):
    description: str = ""
    task: Task
    input: InputConfig
    output: OutputKind
    labels: Annotated[list[str], Field(min_length=2)]
    cam: CamConfig | None = None
    baselines: dict[str, BaselineConfig] = Field(
        default_factory=lambda: {"zero": BaselineConfig(value=0.0)}
    )
    default_baseline: str = "zero"  # after `baselines`: its validator reads them
    # Rows of training data (.npy, K x input shape, no pickle): the reference distribution of
    # kernel_shap / exact_shapley and the sampling statistics of tabular LIME.
    background: str | None = None
    sanity: SanityConfig = Field(default_factory=SanityConfig)
    methods: Annotated[list[str], Field(min_length=1)]

    @field_validator("default_baseline")
    @classmethod
    def _named(cls, value: str, info: ValidationInfo) -> str:
        baselines = info.data.get("baselines", {})
        if value not in baselines:
            raise ValueError(f"{value!r} is not one of the baselines {sorted(baselines)}")
        return value

    @field_validator("methods")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a method twice")
        return value


def load_config(
    path: Path, *, text: str | None = None, class_names: tuple[str, list[str]] | None = None
) -> ModelConfig:
    """Parse and validate `path` (or `text`, read from `path` elsewhere, e.g. inside a model
    archive); ConfigError names the file and the field at fault.

    `class_names` is (where from, names), a model archive's index_to_name.json: the labels
    when the config gives none, and a check of those it gives."""
    raw = read_mapping(path, text=text)
    if class_names is not None:
        source, names = class_names
        labels = raw.setdefault("labels", names)
        if labels != names:
            raise ConfigError(
                str(path), "labels", f"{labels} disagree with {source}'s class names {names}"
            )
    hint = "" if "labels" in raw else " (give labels, or ship index_to_name.json in a .mar)"
    return validated(ModelConfig, raw, path, hints={"labels": hint})


def read_mapping(path: Path, *, text: str | None = None) -> dict[str, Any]:
    """The YAML mapping in `path` (or `text`, read from it elsewhere); ConfigError names the
    file when it cannot be read, is not YAML or is not a mapping."""
    try:
        raw: Any = yaml.safe_load(path.read_text() if text is None else text)
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), None, "must be a mapping of fields")
    return raw


def validated(
    schema: type[Schema], raw: dict[str, Any], path: Path, *, hints: dict[str, str] | None = None
) -> Schema:
    """`raw` as `schema`; ConfigError names the file and the first field at fault (with the
    hint for that field, if any)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        problem = first["msg"] + (hints or {}).get(field or "", "")
        raise ConfigError(str(path), field, problem) from exc
