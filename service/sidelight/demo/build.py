"""Build the demo model repository from data that scikit-learn ships (no download).

    sidelight models build-demo --out var/model-repository --samples var/samples

writes
    digits/          CNN on the 8x8 digits, global average pooling + linear (CAM applies)
    breast_cancer/   MLP on the breast-cancer features, standardisation folded in
    resnet18/        ResNet-18 shape, 3x224x224, random weights (for benchmarks)
and sample inputs for the CLI (PNG and .npy images, JSON rows). Seeds are fixed, so the same
machine builds the same models; held-out accuracy is checked and the build fails below 95%.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from sidelight.demo.architectures import DigitsCnn, ResNet18, TabularMlp

MIN_ACCURACY = 0.95
IMAGE_METHODS = [
    "saliency",
    "input_x_gradient",
    "smoothgrad",
    "vargrad",
    "integrated_gradients",
    "guided_backprop",
    "deeplift",
    "lrp",
    "cam",
    "grad_cam",
    "grad_cam_plus_plus",
    "guided_grad_cam",
]
TABULAR_METHODS = IMAGE_METHODS[: IMAGE_METHODS.index("lrp") + 1]  # no spatial map: no CAM
# Run as jobs (forward passes only). exact_shapley on images enumerates grid cells (3 x 3).
IMAGE_JOB_METHODS = ["kernel_shap", "exact_shapley", "lime", "occlusion", "rise"]
TABULAR_JOB_METHODS = ["kernel_shap", "lime", "occlusion"]  # 30 features: too many to enumerate
# Training rows kept as the background data of kernel_shap and LIME.
BACKGROUND_ROWS = 32


def _write_background(folder: Path, x_train: Any, seed: int) -> str:
    rows = np.random.default_rng(seed).choice(len(x_train), BACKGROUND_ROWS, replace=False)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "background.npy", np.ascontiguousarray(x_train[np.sort(rows)], np.float32))
    return "background.npy"


@dataclass(frozen=True)
class DemoReport:
    name: str
    accuracy: float | None
    path: Path


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    neutral: torch.Tensor | None = None,
) -> None:
    """Adam on cross-entropy. `neutral`: inputs that carry no evidence (the blank baseline),
    taught to give the uniform distribution at every step."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            if neutral is not None:
                outputs = model(neutral)
                uniform = torch.full_like(outputs, 1.0 / outputs.shape[1])
                loss = loss + loss_fn(outputs, uniform)
            loss.backward()
            optimiser.step()
    model.eval()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Save `model` as a torch.export program with a dynamic batch dimension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations inside torch
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, width=100))


def train_digits(
    seed: int = 0, *, permute_labels: bool = False
) -> tuple[DigitsCnn, np.ndarray, np.ndarray, np.ndarray]:
    """The digits CNN trained as the demo build trains it: (model, x_train, x_test, y_test).
    `permute_labels`: on labels shuffled across the training images (the data-randomization
    test of Adebayo et al. 2018: the network can only memorise)."""
    torch.manual_seed(seed)
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # N x 1 x 8 x 8 in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.2, random_state=seed, stratify=data.target
    )
    if permute_labels:
        y_train = np.random.default_rng(seed).permutation(y_train)
    model = DigitsCnn()
    _train(
        model,
        torch.from_numpy(x_train),
        torch.from_numpy(y_train),
        epochs=20,
        lr=2e-3,
        batch_size=32,
        # A blank image is the zero baseline of integrated gradients and DeepLIFT. Left to
        # itself the network scored it 11 logits for "1", so for every 1 f(x) - f(baseline)
        # was near zero and the attributions had nothing to explain; taught to be neutral on
        # it, the baseline means "no evidence" as the methods assume.
        neutral=torch.zeros(1, 1, 8, 8),
    )
    return model, x_train, x_test, y_test


def build_digits(out: Path, samples: Path | None, *, seed: int = 0) -> DemoReport:
    model, x_train, x_test, y_test = train_digits(seed)
    accuracy = _accuracy(model, torch.from_numpy(x_test), torch.from_numpy(y_test))
    _require(accuracy, "digits")
    folder = out / "digits"
    export_program(model, torch.from_numpy(x_test[:2]), folder / "1" / "model.pt2")
    background = _write_background(folder, x_train, seed)
    _write_config(
        folder,
        {
            "description": "Handwritten digits (8x8, scikit-learn), CNN with global average "
            f"pooling; held-out accuracy {accuracy:.3f}",
            "task": "image_classification",
            "input": {"shape": [1, 8, 8], "dtype": "FP32", "range": [0.0, 1.0]},
            "output": "logits",
            "labels": [str(d) for d in range(10)],
            "cam": {"layer": "features", "classifier": "fc"},
            "baselines": {"zero": {"value": 0.0}},
            "default_baseline": "zero",
            "background": background,
            "methods": IMAGE_METHODS + IMAGE_JOB_METHODS,
        },
    )
    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        np.save(samples / "digits.npy", x_test[:16])
        for index in range(3):
            pixels = (x_test[index, 0] * 255).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(samples / f"digit_{y_test[index]}.png")
    return DemoReport("digits", accuracy, folder)


def build_breast_cancer(out: Path, samples: Path | None, *, seed: int = 0) -> DemoReport:
    torch.manual_seed(seed)
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.2, random_state=seed, stratify=data.target
    )
    mean = torch.from_numpy(x_train.mean(0))
    std = torch.from_numpy(x_train.std(0))
    model = TabularMlp(x.shape[1], 2)
    standardised = (torch.from_numpy(x_train) - mean) / std
    _train(model, standardised, torch.from_numpy(y_train), epochs=30, lr=1e-3)
    model.fold_standardisation(mean, std)
    accuracy = _accuracy(model, torch.from_numpy(x_test), torch.from_numpy(y_test))
    _require(accuracy, "breast_cancer")
    folder = out / "breast_cancer"
    export_program(model, torch.from_numpy(x_test[:2]), folder / "1" / "model.pt2")
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "baseline_mean.npy", x_train.mean(0).astype(np.float32))
    background = _write_background(folder, x_train, seed)
    _write_config(
        folder,
        {
            "description": "Breast-cancer diagnosis (Wisconsin, scikit-learn), MLP on raw "
            f"features; held-out accuracy {accuracy:.3f}",
            "task": "tabular_classification",
            "input": {
                "shape": [x.shape[1]],
                "dtype": "FP32",
                "range": [0.0, 10000.0],
                "feature_names": [str(n) for n in data.feature_names],
            },
            "output": "logits",
            "labels": [str(n) for n in data.target_names],
            "baselines": {"mean": {"file": "baseline_mean.npy"}, "zero": {"value": 0.0}},
            "default_baseline": "mean",
            "background": background,
            "methods": TABULAR_METHODS + TABULAR_JOB_METHODS,
        },
    )
    _export_onnx(model, x.shape[1], out / "breast_cancer_onnx", folder, accuracy)
    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        np.save(samples / "breast_cancer.npy", x_test[:16])
        rows = [dict(zip(data.feature_names, map(float, row), strict=True)) for row in x_test[:3]]
        (samples / "breast_cancer.json").write_text(json.dumps(rows[0], indent=1))
    return DemoReport("breast_cancer", accuracy, folder)


def _export_onnx(
    model: nn.Module, features: int, folder: Path, torch_folder: Path, accuracy: float
) -> None:
    """The same network as ONNX, for the methods that need forward passes only."""
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notes
        torch.onnx.export(
            model.eval(),
            (torch.zeros(2, features),),
            str(folder / "1" / "model.onnx"),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )
    config = yaml.safe_load((torch_folder / "config.yaml").read_text())
    for name in ("baseline_mean.npy", "background.npy"):
        shutil.copyfile(torch_folder / name, folder / name)
    config["description"] = (
        "Breast-cancer diagnosis, the same MLP exported to ONNX (forward passes only: "
        f"perturbation methods); held-out accuracy {accuracy:.3f}"
    )
    config["methods"] = TABULAR_JOB_METHODS
    _write_config(folder, config)


def build_resnet18(out: Path, samples: Path | None, *, seed: int = 0) -> DemoReport:
    torch.manual_seed(seed)
    model = ResNet18().eval()
    folder = out / "resnet18"
    example = torch.randn(2, 3, 224, 224)
    export_program(model, example, folder / "1" / "model.pt2")
    _write_config(
        folder,
        {
            "description": "ResNet-18 shape (3x224x224, 1000 classes), random weights: "
            "for benchmarks, it explains nothing real",
            "task": "image_classification",
            "input": {"shape": [3, 224, 224], "dtype": "FP32", "range": [-10.0, 10.0]},
            "output": "logits",
            "labels": [f"class_{i}" for i in range(1000)],
            "cam": {"layer": "layer4", "classifier": "fc"},
            "baselines": {"zero": {"value": 0.0}},
            "default_baseline": "zero",
            "methods": IMAGE_METHODS,
        },
    )
    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        np.save(samples / "resnet18.npy", example.numpy())
    return DemoReport("resnet18", None, folder)


def held_out_inputs(name: str, seed: int = 0) -> np.ndarray:
    """The held-out split the demo model `name` was evaluated on (the same split as its build)."""
    if name == "digits":
        data = load_digits()
        images = (data.images / 16.0).astype(np.float32)[:, None]
        split = train_test_split(
            images, data.target, test_size=0.2, random_state=seed, stratify=data.target
        )
    elif name in ("breast_cancer", "breast_cancer_onnx"):
        cancer = load_breast_cancer()
        split = train_test_split(
            cancer.data.astype(np.float32),
            cancer.target,
            test_size=0.2,
            random_state=seed,
            stratify=cancer.target,
        )
    else:
        raise ValueError(f"{name!r} has no held-out data (it is not trained)")
    held: np.ndarray = split[1]
    return held


def _require(accuracy: float, name: str) -> None:
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"{name}: held-out accuracy {accuracy:.3f} < {MIN_ACCURACY}")


BUILDERS: dict[str, Callable[..., DemoReport]] = {
    "digits": build_digits,
    "breast_cancer": build_breast_cancer,
    "resnet18": build_resnet18,
}


def build_demo(
    out: Path, samples: Path | None = None, names: list[str] | None = None
) -> list[DemoReport]:
    return [BUILDERS[name](out, samples) for name in (names or list(BUILDERS))]
