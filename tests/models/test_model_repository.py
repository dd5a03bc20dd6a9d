"""A wrong model repository entry is refused at start with a message naming the file and the
field, and kept as unavailable with that error while the other models load."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import write_torchscript_model
from sidelight.errors import ConfigError, ModelNotFound, VersionNotFound
from sidelight.methods.catalog import check_model
from sidelight.models.registry import ModelRegistry

CPU = [torch.device("cpu")]


@pytest.fixture
def repository(tmp_path: Path, model_repository: Path) -> Path:
    """A private copy of digits and breast_cancer, free to break."""
    root = tmp_path / "repo"
    for name in ("digits", "breast_cancer"):
        shutil.copytree(model_repository / name, root / name)
    return root


def edit_config(root: Path, model: str, change: Callable[[dict[str, Any]], None]) -> Path:
    path = root / model / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))
    return path


def refused(root: Path, model: str = "digits") -> ConfigError:
    """The error that keeps `model` unavailable; every other model of `root` still loads."""
    registry = ModelRegistry.load(root, CPU, check_model)
    assert list(registry.unavailable) == [model]
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != model)
    assert registry.names() == others
    with pytest.raises(ModelNotFound, match=f"'{model}' is unavailable"):
        registry.get(model)
    return registry.unavailable[model]


def test_a_repository_where_nothing_loads_stops_the_start(repository: Path) -> None:
    edit_config(repository, "digits", lambda c: c.pop("task"))
    edit_config(repository, "breast_cancer", lambda c: c.update(output="scores"))
    with pytest.raises(ConfigError, match="no model loads") as raised:
        ModelRegistry.load(repository, CPU, check_model)
    assert raised.value.field == "output"  # the first broken entry, by name
    assert "task" in str(raised.value)  # and every other one's problem


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda c: c.pop("task"), "task", "required"),
        (lambda c: c.update(task="segmentation"), "task", "image_classification"),
        (lambda c: c["input"].update(shape=[1, 8]), "input.shape", "cannot run"),
        (lambda c: c["input"].update(shape=[0, 8, 8]), "input.shape.0", "greater"),
        (lambda c: c["input"].update(dtype="INT8"), "input.dtype", "FP32"),
        (lambda c: c["input"].update(range=[1.0, 0.0]), "input", "min < max"),
        (lambda c: c.update(output="scores"), "output", "logits"),
        (lambda c: c.update(labels=["a", "b", "c"]), "labels", "10 classes"),
        (lambda c: c.update(methods=["saliency", "telepathy"]), "methods", "telepathy"),
        (lambda c: c.update(methods=[]), "methods", "at least 1"),
        (lambda c: c.update(default_baseline="mean"), "default_baseline", "not one of"),
        (lambda c: c["cam"].update(layer="no.such.layer"), "cam.layer", "no module"),
        (lambda c: c["cam"].update(classifier="features"), "cam.classifier", "no parameter"),
        (lambda c: c.pop("cam"), "methods", "cam needs ['classifier', 'layer']"),
        (lambda c: c.update(colour="blue"), "colour", "not permitted"),
        (lambda c: c["baselines"].update(bad={"value": 1, "file": "x.npy"}), "baselines", "one"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_wrong_digits_config_is_refused(
    repository: Path, change: Callable[[dict[str, Any]], None], field: str, words: str
) -> None:
    path = edit_config(repository, "digits", change)
    error = refused(repository)
    assert error.path == str(path)
    assert error.field is not None and error.field.startswith(field), str(error)
    assert words in str(error)


def test_baseline_file_of_the_wrong_shape(repository: Path) -> None:
    np.save(repository / "breast_cancer" / "baseline_mean.npy", np.zeros(29, np.float32))
    error = refused(repository, "breast_cancer")
    assert error.field == "baselines.mean.file" and "[29]" in str(error)


def test_baseline_file_that_is_a_pickle_is_refused(repository: Path) -> None:
    """An .npy of object dtype carries a pickle after its header; the loader must refuse it
    without unpickling. The header alone makes the case: no pickle is written here."""
    with (repository / "breast_cancer" / "baseline_mean.npy").open("wb") as out:
        header = {"descr": "|O", "fortran_order": False, "shape": (30,)}
        np.lib.format.write_array_header_1_0(out, header)
        out.write(b"\x80\x04not a pickle anyone should open")
    error = refused(repository, "breast_cancer")
    assert "baseline_mean.npy" in error.path and "not a readable .npy" in str(error)


def test_config_that_is_not_yaml(repository: Path) -> None:
    (repository / "digits" / "config.yaml").write_text("task: [unclosed")
    assert "not valid YAML" in str(refused(repository))


def test_version_folder_without_a_model_file(repository: Path) -> None:
    (repository / "digits" / "2").mkdir()
    error = refused(repository)
    assert error.path.endswith("digits/2") and "model.pt2" in str(error)


def test_version_folder_with_a_bad_name(repository: Path) -> None:
    (repository / "digits" / "latest").mkdir()
    assert "1, 2, 3" in str(refused(repository))


def test_corrupt_model_file(repository: Path) -> None:
    (repository / "digits" / "1" / "model.pt2").write_bytes(b"not a zip archive")
    error = refused(repository)
    assert error.path.endswith("model.pt2") and "torch_export" in str(error)


def test_torchscript_model_cannot_offer_layer_methods(repository: Path) -> None:
    write_torchscript_model(repository / "tiny")
    edit_config(repository, "tiny", lambda c: c["methods"].append("deeplift"))
    error = refused(repository, "tiny")
    assert error.field == "methods" and "torch.export" in str(error)


def test_versions_and_latest(repository: Path) -> None:
    shutil.copytree(repository / "digits" / "1", repository / "digits" / "10")
    shutil.copytree(repository / "digits" / "1", repository / "digits" / "2")
    registry = ModelRegistry.load(repository, CPU, check_model)
    assert registry.versions("digits") == ["1", "2", "10"]
    assert registry.get("digits").version == "10"
    assert registry.get("digits", "2").version == "2"
    with pytest.raises(VersionNotFound, match="no version '3'"):
        registry.get("digits", "3")
    with pytest.raises(ModelNotFound, match="known: \\['breast_cancer', 'digits'\\]"):
        registry.get("mnist")


def test_loaded_model_records_digests_and_capabilities(repository: Path) -> None:
    model = ModelRegistry.load(repository, CPU, check_model).get("digits").primary
    assert len(model.file_digest) == 64
    assert model.num_classes == 10
    assert {c.value for c in model.capabilities} == {
        "gradients",
        "module_rules",
        "layer",
        "classifier",
    }
    assert model.classifier_weight is not None and tuple(model.classifier_weight.shape) == (
        10,
        64,
    )
    zero = model.baseline()
    assert zero.tensor.shape == (1, 1, 8, 8) and float(zero.tensor.abs().sum()) == 0.0


def test_a_private_copy_made_while_a_method_hooks_the_model_carries_no_hook(
    repository: Path,
) -> None:
    """A copy taken mid-explanation (the sampler copies on first use, while the executor may
    be hooking the loaded module) has its own layer, and none of the original's hooks."""
    model = ModelRegistry.load(repository, CPU, check_model).get("digits").primary
    fired: list[str] = []
    assert model.layer is not None
    handle = model.layer.register_forward_hook(lambda *_: fired.append("original's hook"))
    try:
        copy = model.private_copy()
        assert copy.module is not model.module and copy.layer is not model.layer
        copy.module(torch.zeros(2, 1, 8, 8))
        assert fired == []
        model.module(torch.zeros(2, 1, 8, 8))
        assert fired == ["original's hook"]  # the original keeps its own
    finally:
        handle.remove()
    assert copy.layer is not None
    seen: list[tuple[int, ...]] = []
    copy.layer.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    copy.module(torch.zeros(3, 1, 8, 8))
    assert len(seen) == 1 and seen[0][0] == 3  # the copy's own layer still hooks
