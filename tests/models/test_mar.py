"""TorchServe archives (.mar) in the model repository: what loads, and every archive refused
with the problem named while the other models load.

The archives here are zips laid out as torch-model-archiver 0.12 writes them (files at the
root, `MAR-INF/MANIFEST.json`); tests/integrations/test_torchserve.py archives with the real
archiver and serves the result in a real TorchServe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from sidelight.errors import ConfigError
from sidelight.methods.catalog import check_model
from sidelight.models.mar import read_member
from sidelight.models.registry import ModelRegistry

CPU = [torch.device("cpu")]
NAMES = {"0": "malignant", "1": "benign"}


def manifest(serialized: str | None = "model.pt2", **model: str) -> bytes:
    fields: dict[str, Any] = {"modelName": "bc", "handler": "torchserve.py", **model}
    if serialized is not None:
        fields["serializedFile"] = serialized
    document = {"createdOn": "04/12/2026 15:00:00", "runtime": "python", "model": fields}
    return json.dumps(document).encode()


def write_mar(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture
def breast_cancer(model_repository: Path) -> dict[str, Any]:
    """The demo breast_cancer model's files, and its config without labels."""
    folder = model_repository / "breast_cancer"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config.pop("labels") == list(NAMES.values())
    return {
        "model.pt2": (folder / "1" / "model.pt2").read_bytes(),
        "config": config,
        "baseline_mean.npy": (folder / "baseline_mean.npy").read_bytes(),
        "background.npy": (folder / "background.npy").read_bytes(),
    }


@pytest.fixture
def repository(tmp_path: Path, model_repository: Path) -> Path:
    """digits, as built by the demo: it must load whatever the archives beside it hold."""
    root = tmp_path / "repo"
    shutil.copytree(model_repository / "digits", root / "digits")
    return root


def archive_with_config_inside(root: Path, bc: dict[str, Any], **changes: bytes) -> Path:
    """bc/1/model.mar shipping its model, config.yaml, index_to_name.json and the .npy files
    the config names: a TorchServe model-store file dropped in as it is."""
    files = {
        "MAR-INF/MANIFEST.json": manifest(),
        "model.pt2": bc["model.pt2"],
        "torchserve.py": b"# the handler: never read by Sidelight\n",
        "config.yaml": yaml.safe_dump(bc["config"]).encode(),
        "index_to_name.json": json.dumps(NAMES).encode(),
        "baseline_mean.npy": bc["baseline_mean.npy"],
        "background.npy": bc["background.npy"],
    }
    files.update(changes)
    return write_mar(root / "bc" / "1" / "model.mar", {k: v for k, v in files.items() if v})


def unavailable(root: Path, model: str = "bc") -> ConfigError:
    """The error that keeps `model` unavailable, once digits is seen to load beside it."""
    registry = ModelRegistry.load(root, CPU, check_model)
    assert registry.names() == ["digits"]
    assert list(registry.unavailable) == [model]
    return registry.unavailable[model]


def test_a_torch_export_archive_with_everything_inside(
    repository: Path, breast_cancer: dict[str, Any], model_repository: Path
) -> None:
    path = archive_with_config_inside(repository, breast_cancer)
    registry = ModelRegistry.load(repository, CPU, check_model)
    model = registry.get("bc").primary
    assert registry.names() == ["bc", "digits"] and not registry.unavailable
    assert model.format.value == "torch_export"
    assert model.config.labels == ["malignant", "benign"]  # from index_to_name.json
    assert model.file_digest == hashlib.sha256(path.read_bytes()).hexdigest()
    expected_mean = np.load(model_repository / "breast_cancer" / "baseline_mean.npy")
    np.testing.assert_array_equal(model.baseline("mean").tensor[0].numpy(), expected_mean)
    assert model.background is not None and model.background.tensor.shape == (32, 30)
    # The same forward pass as the demo's own file.
    plain = torch.export.load(str(model_repository / "breast_cancer" / "1" / "model.pt2"))
    rows = torch.as_tensor(np.load(model_repository / "breast_cancer" / "background.npy"))
    torch.testing.assert_close(model.module(rows), plain.module()(rows))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_a_torchscript_archive_with_its_config_beside_it(
    repository: Path, model_repository: Path
) -> None:
    """config.yaml in the model folder (no labels: the archive's class names give them)."""
    source = model_repository / "tiny_torchscript"
    config = yaml.safe_load((source / "config.yaml").read_text())
    del config["labels"]
    (repository / "tiny").mkdir()
    (repository / "tiny" / "config.yaml").write_text(yaml.safe_dump(config))
    files = {
        "MAR-INF/MANIFEST.json": manifest("model.pt"),
        "model.pt": (source / "1" / "model.pt").read_bytes(),
        "index_to_name.json": json.dumps({"0": ["n0", "x"], "1": ["n1", "y"], "2": "z"}).encode(),
    }
    write_mar(repository / "tiny" / "1" / "model.mar", files)
    model = ModelRegistry.load(repository, CPU, check_model).get("tiny").primary
    assert model.format.value == "torchscript"
    assert model.config.labels == ["x", "y", "z"]
    rows = torch.randn(3, 4)
    plain = torch.jit.load(str(source / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    torch.testing.assert_close(model.module(rows), plain(rows))


def test_an_eager_model_is_refused_without_running_its_code(
    repository: Path, breast_cancer: dict[str, Any]
) -> None:
    # The model file would raise if anything imported it.
    code = b"raise SystemExit('the archive code ran')\n"
    archive_with_config_inside(
        repository,
        breast_cancer,
        **{
            "MAR-INF/MANIFEST.json": manifest("weights.pth", modelFile="net.py"),
            "net.py": code,
            "weights.pth": b"\x80\x04 a pickle nobody opens",
        },
    )
    error = unavailable(repository)
    assert error.path.endswith("bc/1/model.mar") and error.field == "model.modelFile"
    assert "eager model (net.py" in str(error) and "torch.export" in str(error)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"model.pt2": b""}, "model.serializedFile", "'model.pt2' is not in the archive"),
        ({"MAR-INF/MANIFEST.json": manifest(None)}, "model.serializedFile", "names no model"),
        ({"MAR-INF/MANIFEST.json": manifest("model.onnx")}, "model.serializedFile", "neither"),
        ({"MAR-INF/MANIFEST.json": b"{not json"}, "MAR-INF/MANIFEST.json", "not valid JSON"),
        ({"MAR-INF/MANIFEST.json": b""}, "MAR-INF/MANIFEST.json", "not a torch-model-archiver"),
        ({"MAR-INF/MANIFEST.json": b"[]"}, "MAR-INF/MANIFEST.json", "no 'model' object"),
        ({"index_to_name.json": b'{"0": "a", "2": "c"}'}, "index_to_name.json", "0..K-1"),
        ({"index_to_name.json": b'{"0": "a", "1": 7}'}, "index_to_name.json: 1", "class name"),
        ({"model.pt2": b"not a program"}, None, "cannot be loaded as torch_export"),
    ],
    ids=[
        "serialized file missing",
        "no serialized file named",
        "not torch",
        "manifest not json",
        "no manifest",
        "manifest not an object",
        "index_to_name gap",
        "index_to_name not a name",
        "corrupt model",
    ],
)
def test_a_broken_archive_is_refused_naming_the_problem(
    repository: Path,
    breast_cancer: dict[str, Any],
    changes: dict[str, bytes],
    field: str | None,
    words: str,
) -> None:
    archive_with_config_inside(repository, breast_cancer, **changes)
    error = unavailable(repository)
    assert error.path.endswith("bc/1/model.mar"), str(error)
    assert error.field == field and words in str(error), str(error)


def test_a_file_that_is_not_a_zip(repository: Path) -> None:
    (repository / "bc" / "1").mkdir(parents=True)
    (repository / "bc" / "1" / "model.mar").write_bytes(b"PK but not really a zip")
    error = unavailable(repository)
    assert error.path.endswith("model.mar") and "not a zip" in str(error)


def test_class_names_that_disagree_with_the_outputs(
    repository: Path, breast_cancer: dict[str, Any]
) -> None:
    three = json.dumps({"0": "a", "1": "b", "2": "c"}).encode()
    archive_with_config_inside(repository, breast_cancer, **{"index_to_name.json": three})
    error = unavailable(repository)
    assert error.path.endswith("model.mar:config.yaml") and error.field == "labels"
    assert "has 3 labels (the class names of" in str(error)
    assert "index_to_name.json) but the model (torch_export (model.pt2)) outputs 2" in str(error)


def test_config_labels_that_disagree_with_the_class_names(
    repository: Path, breast_cancer: dict[str, Any]
) -> None:
    config = dict(breast_cancer["config"], labels=["benign", "malignant"])
    archive_with_config_inside(
        repository, breast_cancer, **{"config.yaml": yaml.safe_dump(config).encode()}
    )
    error = unavailable(repository)
    assert error.field == "labels" and "disagree with" in str(error)


def test_no_labels_anywhere(repository: Path, breast_cancer: dict[str, Any]) -> None:
    archive_with_config_inside(repository, breast_cancer, **{"index_to_name.json": b""})
    error = unavailable(repository)
    assert error.field == "labels" and "index_to_name.json" in str(error)


def test_no_config_beside_nor_inside(repository: Path, breast_cancer: dict[str, Any]) -> None:
    archive_with_config_inside(repository, breast_cancer, **{"config.yaml": b""})
    error = unavailable(repository)
    assert error.path.endswith("bc/config.yaml") and "ships no config.yaml" in str(error)


def test_a_file_the_config_names_missing_from_the_archive(
    repository: Path, breast_cancer: dict[str, Any]
) -> None:
    archive_with_config_inside(repository, breast_cancer, **{"background.npy": b""})
    error = unavailable(repository)
    assert error.path.endswith("model.mar:background.npy"), str(error)
    assert "not in the archive" in str(error)


def test_members_are_read_within_a_size_limit(tmp_path: Path) -> None:
    path = write_mar(tmp_path / "a.mar", {"big.bin": bytes(1000)})
    assert read_member(path, "big.bin", 1000) == bytes(1000)
    with pytest.raises(ConfigError, match=r"big\.bin: is 1000 bytes, over 999"):
        read_member(path, "big.bin", 999)


def test_an_understated_size_is_caught_while_reading(tmp_path: Path) -> None:
    """A zip whose headers claim a small file that inflates to more (a zip bomb)."""
    path = write_mar(tmp_path / "a.mar", {"bomb.bin": bytes(100_000)})
    data = bytearray(path.read_bytes())
    # Patch the declared uncompressed size (local header and central directory) to 10 bytes.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at : at + 4] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"bomb\.bin") as raised:
        read_member(path, "bomb.bin", 1000)
    assert "more than 1000 bytes" in str(raised.value) or "cannot be read" in str(raised.value)
