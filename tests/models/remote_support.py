"""Real peers for the remote-model tests: an MLServer 1.7.1 (mlserver-sklearn) serving a logistic
regression trained in the peers' venv, and the same model as a local torch.export file.

The model: scikit-learn's LogisticRegression on the first 8 features of breast_cancer,
standardized. MLServer serves its `predict_proba`; the local copy computes
p = sigmoid(x . coef + intercept), [1 - p, p] in float64 (as scikit-learn does for two classes),
from the coefficients the training script wrote as JSON.
"""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
import yaml
from conftest import wait_until
from peers import peer_command, peer_python
from sidelight.demo.build import export_program
from sidelight.oip import grpc_service_pb2 as oip_pb
from sidelight.oip import grpc_service_pb2_grpc as oip_grpc
from torch import nn

HERE = Path(__file__).resolve().parent
FEATURES = 8
LABELS = ["malignant", "benign"]
# rise explains images only: it runs against the TorchServe image model (test_remote_torchserve).
TABULAR_METHODS = ["kernel_shap", "exact_shapley", "lime", "occlusion"]
MLSERVER_MODEL = "cancer"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Logistic:
    """What the peer training wrote: coefficients (F,), intercept, standardized rows (N x F)."""

    coef: np.ndarray
    intercept: float
    rows: np.ndarray

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """The independent computation, in numpy: N x 2."""
        p = 1.0 / (1.0 + np.exp(-(rows @ self.coef + self.intercept)))
        return np.stack([1.0 - p, p], 1)


def train_logistic(folder: Path) -> Logistic:
    """model.joblib (for MLServer) and the fitted figures, trained by the peers' Python."""
    done = subprocess.run(
        [str(peer_python()), str(HERE / "peer_train.py"), str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads((folder / "model.json").read_text())
    return Logistic(
        np.asarray(figures["coef"], dtype=np.float64),
        float(figures["intercept"]),
        np.asarray(figures["rows"], dtype=np.float64),
    )


class LogisticModule(nn.Module):
    def __init__(self, coef: np.ndarray, intercept: float) -> None:
        super().__init__()
        self.register_buffer("coef", torch.as_tensor(coef, dtype=torch.float64))
        self.register_buffer("intercept", torch.tensor(intercept, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x @ self.coef + self.intercept)  # N
        return torch.stack([1 - p, p], 1)  # N x 2


def model_config(methods: list[str]) -> dict[str, object]:
    return {
        "description": "breast_cancer, 8 standardized features, logistic regression",
        "task": "tabular_classification",
        "input": {"shape": [FEATURES], "dtype": "FP64"},
        "output": "probabilities",
        "labels": LABELS,
        "background": "background.npy",
        "methods": methods,
    }


def background_rows(logistic: Logistic) -> np.ndarray:
    return logistic.rows[::40][:12]  # 12 x 8 reference rows


def write_entry(folder: Path, logistic: Logistic, methods: list[str]) -> None:
    """config.yaml and background.npy of an entry (its version folder is the caller's)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(model_config(methods)))
    np.save(folder / "background.npy", background_rows(logistic))


def write_local(folder: Path, logistic: Logistic) -> None:
    write_entry(folder, logistic, ["saliency", "integrated_gradients", *TABULAR_METHODS])
    export_program(
        LogisticModule(logistic.coef, logistic.intercept),
        torch.zeros(2, FEATURES, dtype=torch.float64),
        folder / "1" / "model.pt2",
    )


def write_remote(folder: Path, logistic: Logistic, grpc_port: int, **remote: object) -> None:
    write_entry(folder, logistic, TABULAR_METHODS)
    settings = {
        "protocol": "oip",
        "target": f"127.0.0.1:{grpc_port}",
        "model_name": MLSERVER_MODEL,
        "model_version": "1",
        "output_name": "predict_proba",
        "batch_rows": 256,
        "max_concurrency": 2,
        "timeout_seconds": 10.0,
        "retries": 2,
        **remote,
    }
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "remote.yaml").write_text(yaml.safe_dump(settings))


class MlServer:
    """A real `mlserver start` on free loopback ports, serving model.joblib from `folder`; it can
    be stopped and started again on the same ports."""

    def __init__(self, folder: Path, model_folder: Path) -> None:
        self.folder = folder
        self.grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": metrics_port,
            "parallel_workers": 0,  # in-process: no uvloop workers (needs uvloop < 0.22 else)
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        served = folder / MLSERVER_MODEL
        served.mkdir(exist_ok=True)
        (served / "model.joblib").write_bytes((model_folder / "model.joblib").read_bytes())
        model_settings = {
            "name": MLSERVER_MODEL,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {
                "uri": "./model.joblib",
                "version": "1",
                # What the runtime returns when a request names no output: predict_proba.
                "extra": {"predict_fn": "predict_proba"},
            },
        }
        (served / "model-settings.json").write_text(json.dumps(model_settings))
        self.log = folder / "mlserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(peer_command("mlserver")), "start", str(self.folder)],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.ready, 90, f"MLServer to serve {MLSERVER_MODEL} on {self.target}")

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mlserver exited: {self.log.read_text()[-3000:]}")
        with grpc.insecure_channel(self.target) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                request = oip_pb.ModelReadyRequest(name=MLSERVER_MODEL, version="1")
                return bool(stub.ModelReady(request, timeout=1).ready)
            except grpc.RpcError:
                return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None
