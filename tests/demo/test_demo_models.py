"""The demo repository: reproducible, accurate enough, and the ResNet-18 shape serves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import yaml
from sidelight.demo.build import MIN_ACCURACY, build_demo
from sidelight.methods.base import Batch
from sidelight.methods.catalog import METHODS, check_model, parse_params
from sidelight.models.registry import ModelRegistry


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_build_is_reproducible_and_accurate(tmp_path: Path, model_repository: Path) -> None:
    """Built a second time, the same files (torch.export, ONNX, background rows), bit for bit;
    held-out accuracy at least 0.95."""
    reports = build_demo(tmp_path, tmp_path / "samples", ["digits", "breast_cancer"])
    for report in reports:
        assert report.accuracy is not None and report.accuracy >= MIN_ACCURACY >= 0.95
        again = tmp_path / report.name / "1" / "model.pt2"
        first = model_repository / report.name / "1" / "model.pt2"
        assert digest(again) == digest(first), report.name
        config = yaml.safe_load((tmp_path / report.name / "config.yaml").read_text())
        assert f"{report.accuracy:.3f}" in config["description"]
    for name in (
        "breast_cancer_onnx/1/model.onnx",
        "digits/background.npy",
        "breast_cancer/background.npy",
    ):
        assert digest(tmp_path / name) == digest(model_repository / name), name
    samples = tmp_path / "samples"
    digits = np.load(samples / "digits.npy", allow_pickle=False)
    assert digits.dtype == np.float32 and digits.shape[1:] == (1, 8, 8)
    assert np.load(samples / "breast_cancer.npy", allow_pickle=False).shape[1:] == (30,)


def test_resnet18_shape_loads_and_explains(tmp_path: Path) -> None:
    """The benchmark's model: 3x224x224, 1000 classes, a 7x7 CAM layer, every image method."""
    build_demo(tmp_path, None, ["resnet18"])
    registry = ModelRegistry.load(tmp_path, [torch.device("cpu")], check_model)
    model = registry.get("resnet18").primary
    assert model.input_shape == (3, 224, 224)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    method = METHODS["grad_cam"]
    result = method.attribute(
        model,
        Batch(x, torch.tensor([3, 7]), torch.zeros(2, dtype=torch.int64)),
        parse_params(method, {}),
        64,
    )
    assert result.outputs.shape == (2, 1000)
    assert result.attributions.shape == (2, 1, 224, 224)
    assert torch.isfinite(result.attributions).all() and result.attributions.abs().sum() > 0
