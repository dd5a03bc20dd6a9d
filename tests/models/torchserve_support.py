"""A real TorchServe 0.12 (from Sidelight's venv, Java 17) on free loopback ports, serving a
TorchScript image model archived with the test handler torchserve_body_handler.py.

The model: 3 classes of softmax(W . flatten(x) + b) over 1 x 8 x 8 images, float64, seeded
weights; the same model.pt file is loaded locally by Sidelight as a second repository entry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import grpc
import numpy as np
import torch
import yaml
from conftest import wait_until
from google.protobuf import empty_pb2
from peers import java, venv_command
from remote_support import free_port
from sidelight.torchserve import inference_pb2 as ts_pb
from sidelight.torchserve import inference_pb2_grpc as ts_grpc
from torch import nn

HERE = Path(__file__).resolve().parent
SHAPE = [1, 8, 8]
LABELS = ["a", "b", "c"]
IMAGE_METHODS = ["rise", "occlusion", "kernel_shap"]
TORCHSERVE_MODEL = "digits"


class SoftmaxImage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.linear = nn.Linear(64, 3, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 64, generator=generator, dtype=torch.float64))
            self.linear.bias.copy_(torch.randn(3, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(torch.flatten(x, 1)), 1)  # N x 3


def write_torchscript(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        torch.jit.save(torch.jit.script(SoftmaxImage().eval()), str(path))  # type: ignore[no-untyped-call]


def image_config(methods: list[str]) -> dict[str, object]:
    return {
        "task": "image_classification",
        "input": {"shape": SHAPE, "dtype": "FP64", "range": [0.0, 1.0]},
        "output": "probabilities",
        "labels": LABELS,
        "methods": methods,
    }


def write_local_image(folder: Path, model_file: Path) -> None:
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.pt").write_bytes(model_file.read_bytes())
    (folder / "config.yaml").write_text(yaml.safe_dump(image_config(["saliency", *IMAGE_METHODS])))


def write_remote_image(folder: Path, grpc_port: int, **remote: object) -> None:
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(image_config(IMAGE_METHODS)))
    settings = {
        "protocol": "torchserve",
        "target": f"127.0.0.1:{grpc_port}",
        "model_name": TORCHSERVE_MODEL,
        "batch_rows": 512,
        "max_concurrency": 2,
        "timeout_seconds": 30.0,
        **remote,
    }
    (folder / "1" / "remote.yaml").write_text(yaml.safe_dump(settings))


class TorchServe:
    """`torchserve --foreground` on free loopback ports; READY once the model answers Ping and
    a prediction (a worker is up: about 30 s on this machine)."""

    def __init__(self, folder: Path, model_file: Path) -> None:
        self.folder = folder
        store = folder / "store"
        store.mkdir(parents=True)
        archived = subprocess.run(
            [
                str(venv_command("torch-model-archiver")),
                "--model-name",
                TORCHSERVE_MODEL,
                "--version",
                "1.0",
                "--serialized-file",
                str(model_file),
                "--handler",
                str(HERE / "torchserve_body_handler.py"),
                "--export-path",
                str(store),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert archived.returncode == 0, archived.stderr
        self.grpc_port = free_port()
        ports = [free_port() for _ in range(4)]
        (folder / "config.properties").write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{ports[0]}",
                    f"management_address=http://127.0.0.1:{ports[1]}",
                    f"metrics_address=http://127.0.0.1:{ports[2]}",
                    "grpc_inference_address=127.0.0.1",
                    f"grpc_inference_port={self.grpc_port}",
                    "grpc_management_address=127.0.0.1",
                    f"grpc_management_port={ports[3]}",
                    "disable_token_authorization=true",
                    "default_workers_per_model=1",
                    "install_py_dep_per_model=false",
                    f"model_store={store}",
                    "",
                ]
            )
        )
        java()
        private_tmp = folder / "tmp"  # TorchServe's pid file lives in TMPDIR: one per server
        private_tmp.mkdir()
        env = {
            **os.environ,
            "TMPDIR": str(private_tmp),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LOG_LOCATION": str(folder / "logs"),
            "METRICS_LOCATION": str(folder / "logs"),
        }
        self.log = folder / "torchserve.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(venv_command("torchserve")),
                    "--start",
                    "--foreground",
                    "--ncs",
                    "--disable-token-auth",
                    "--ts-config",
                    str(folder / "config.properties"),
                    "--models",
                    f"{TORCHSERVE_MODEL}={TORCHSERVE_MODEL}.mar",
                ],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # `torchserve --foreground` starts the Java frontend, which starts the Python
                # workers: a group of their own, so that stop() ends all of them.
                start_new_session=True,
            )
        wait_until(self.healthy, 120, f"TorchServe to answer Ping on {self.target}")
        wait_until(self.predicts, 120, f"TorchServe's worker for {TORCHSERVE_MODEL}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"torchserve exited: {self.log.read_text()[-3000:]}")
        with grpc.insecure_channel(self.target) as channel:
            stub = ts_grpc.InferenceAPIsServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                return "Healthy" in stub.Ping(empty_pb2.Empty(), timeout=1).health
            except grpc.RpcError:
                return False

    def predicts(self) -> bool:
        """Whether a prediction of one row succeeds (Ping answers before the worker is up)."""
        with grpc.insecure_channel(self.target) as channel:
            stub = ts_grpc.InferenceAPIsServiceStub(channel)  # type: ignore[no-untyped-call]
            body = json.dumps({"instances": [np.zeros(SHAPE).tolist()]}).encode()
            request = ts_pb.PredictionsRequest(model_name=TORCHSERVE_MODEL, input={"body": body})
            try:
                return len(json.loads(stub.Predictions(request, timeout=5).prediction)) > 0
            except grpc.RpcError:
                return False

    def stop(self) -> None:
        """SIGTERM to the whole group (terminating the launcher alone leaves Java running)."""
        group = self.process.pid  # the session leader's pid is the group's id
        os.killpg(group, signal.SIGTERM)
        try:
            wait_until(  # poll() reaps the launcher, which would linger as a zombie
                lambda: self.process.poll() is not None and not _group_alive(group),
                30,
                "TorchServe's processes to end",
            )
        except AssertionError:
            os.killpg(group, signal.SIGKILL)
        self.process.wait(10)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
