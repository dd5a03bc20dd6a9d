"""Shared fixtures: a model repository built for the session, and real servers on free ports.

The repository holds the demo `digits` and `breast_cancer` models, trained here from
scikit-learn's data exactly as `sidelight models build-demo` does, and `tiny_torchscript`, a
TorchScript MLP that exercises the TorchScript loader.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
import torch
import yaml
from sidelight.client import CHANNEL_OPTIONS, TERMINAL_JOB_STATES
from sidelight.demo.architectures import TabularMlp
from sidelight.demo.build import build_demo, export_program
from sidelight.methods.catalog import check_model
from sidelight.models.config import load_config
from sidelight.models.loaders import load_model
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sidelight.settings import AuditSettings, BatchingSettings, ServerSettings
from sidelight.transport.server import Service
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from torch import nn

TINY_FEATURES = 4
T = TypeVar("T")
# How often `wait_until` looks: short against every wait the tests make.
POLL_S = 0.01


def wait_until(condition: Callable[[], T], timeout: float, what: str) -> T:
    """The one way tests wait: look at `condition` until it gives a true value (returned) or
    `timeout` seconds pass (AssertionError naming `what`). Never a bare sleep: a wait ends as
    soon as what it waits for holds, and a slow machine only makes it look longer."""
    give_up = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


def scrape_metrics(port: int) -> dict[str, float]:
    """The samples a /metrics port answers, by series (name and labels as exposed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def watch_job(stub: pb_grpc.ExplainerStub, job_id: str, timeout: float = 120) -> pb.Job:
    """The job once it ends, pushed by WatchJob (no polling), within `timeout` seconds."""
    last = None
    for last in stub.WatchJob(pb.GetJobRequest(job_id=job_id), timeout=timeout):
        if last.state in TERMINAL_JOB_STATES:
            return last
    raise AssertionError(f"job {job_id} watch ended before the job: {last}")


class LinearProbability(nn.Module):
    """p(class 1) = 0.5 + w . x, p(class 0) = its complement: linear in the input, so that
    attributions, surrogates and faithfulness scores have closed forms."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights.reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = 0.5 + torch.flatten(x, 1) @ self.weights
        return torch.stack([1 - p, p], 1)


def linear_model(
    root: Path,
    name: str,
    weights: torch.Tensor,
    shape: list[int],
    methods: list[str],
    background: np.ndarray | None = None,
) -> Model:
    """A LinearProbability exported with torch.export, loaded as the service loads models."""
    folder = root / name
    example = torch.zeros(2, *shape)
    export_program(LinearProbability(weights), example, folder / "1" / "model.pt2")
    config: dict[str, object] = {
        "task": "tabular_classification" if len(shape) == 1 else "image_classification",
        "input": {"shape": shape, "range": [-5.0, 5.0]},
        "output": "probabilities",
        "labels": ["no", "yes"],
        "methods": methods,
    }
    if background is not None:
        np.save(folder / "background.npy", background.astype(np.float32))
        config["background"] = "background.npy"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    model = load_model(folder, "1", load_config(folder / "config.yaml"), torch.device("cpu"))
    check_model(model)
    return model


def write_torchscript_model(folder: Path, *, seed: int = 0) -> None:
    """A 4-feature, 3-class TorchScript MLP with a config allowing the gradient methods."""
    torch.manual_seed(seed)
    model = TabularMlp(TINY_FEATURES, 3, hidden=8).eval()
    (folder / "1").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        torch.jit.save(torch.jit.script(model), str(folder / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    config = {
        "task": "tabular_classification",
        "input": {"shape": [TINY_FEATURES], "dtype": "FP32", "range": [-100.0, 100.0]},
        "output": "logits",
        "labels": ["a", "b", "c"],
        "methods": ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad"],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model-repository")
    build_demo(root, None, ["digits", "breast_cancer"])
    write_torchscript_model(root / "tiny_torchscript")
    return root


@pytest.fixture(scope="session")
def registry(model_repository: Path) -> ModelRegistry:
    return ModelRegistry.load(model_repository, [torch.device("cpu")], check_model)


class ServerThread:
    """A real Sidelight server on a free loopback port, its asyncio loop in a thread."""

    def __init__(self, settings: ServerSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.service: Service = self.call(Service.start(settings), timeout=120)
        self.address = f"127.0.0.1:{self.service.endpoints.grpc_port}"

    def call(self, coroutine, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    def stop(self, grace: float = 1.0) -> None:
        self.call(self.service.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def server_settings(model_repository: Path, **batching: object) -> ServerSettings:
    return ServerSettings(
        model_repository=model_repository,
        port=0,
        metrics_port=0,
        grace_period_s=2.0,
        faithfulness_sample=0.0,  # tests that sample say so
        # Every test server keeps a strict audit log (SQLite) of its own.
        audit=AuditSettings(data_dir=Path(tempfile.mkdtemp(prefix="sidelight-audit-"))),
        batching=replace(BatchingSettings(), **batching),  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def server(model_repository: Path) -> Iterator[ServerThread]:
    running = ServerThread(server_settings(model_repository))
    yield running
    running.stop()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with server.channel() as opened:
        yield opened


class RedisServer:
    """A private `redis-server` on a free loopback port, with its append-only file in `folder`,
    that a test may kill (-9) and start again on the same port and data."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, f"redis-server to answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the append-only file already holds."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    server = RedisServer(tmp_path)
    yield server
    server.kill()
