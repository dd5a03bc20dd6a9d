"""The container image, run for real: `make image-test` builds it (Dockerfile, on a local Debian
base) and this module starts it as production would — read-only root, UID 10001, configuration
from SIDELIGHT_* variables and a mounted YAML file, the demo model repository mounted read-only,
the audit log in a volume — then checks gRPC health and one Explain call through the container's
port, and stops it with SIGTERM: the server must drain and exit 0.

Deselected from `make test` (marker `image`); podman here needs `--runtime runc`, cgroupfs and a
containers.conf without rlimits (tests/image/containers.conf), and the host network.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidelight.client import Client, to_array
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SIDELIGHT_IMAGE", "sidelight:0.1.0")
REPOSITORY = ROOT / "var" / "model-repository"
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
PODMAN = ["podman", "--cgroup-manager", "cgroupfs"]
INSTALL = "apt-get install -y podman runc, then `make image` (or run `make image-test`)"
START_TIMEOUT_S = 240.0

pytestmark = pytest.mark.image


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout, env=environ
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Running:
    name: str
    port: int
    metrics_port: int

    def logs(self) -> str:
        answer = podman("logs", self.name, check=False)
        return answer.stdout + answer.stderr

    def state(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.fail(f"podman and runc are needed: {INSTALL}")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"no image {IMAGE}: `make image` builds it")
    if not (REPOSITORY / ".built").exists():
        pytest.fail(f"no demo repository in {REPOSITORY}: `make demo` builds it")
    config = tmp_path_factory.mktemp("config") / "config.yaml"
    config.write_text("serve:\n  max_batch_size: 16\n  faithfulness_sample: 0\n")
    config.chmod(0o644)
    running = Running(f"sidelight-test-{uuid.uuid4().hex[:8]}", free_port(), free_port())
    volume = f"{running.name}-audit"
    podman(
        "run", "--detach", "--name", running.name, "--runtime", "runc", "--network", "host",
        "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{REPOSITORY}:/models:ro",
        "--volume", f"{volume}:/var/lib/sidelight/audit",
        "--volume", f"{config}:/etc/sidelight/config.yaml:ro",
        "--env", "SIDELIGHT_CONFIG=/etc/sidelight/config.yaml",
        "--env", f"SIDELIGHT_PORT={running.port}",
        "--env", f"SIDELIGHT_METRICS_PORT={running.metrics_port}",
        IMAGE,
    )  # fmt: skip
    try:
        yield running
    finally:
        podman("rm", "--force", "--time", "0", running.name, check=False)
        podman("volume", "rm", "--force", volume, check=False)


def health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return -1
        return int(reply.status)


def test_the_container_serves_explains_and_drains_on_sigterm(container: Running) -> None:
    def serving() -> bool:
        if container.state() != "running":
            raise AssertionError(f"the container stopped while starting:\n{container.logs()}")
        return (
            health(container.port, "sidelight.v1.Explainer")
            == health_pb2.HealthCheckResponse.SERVING
        )

    wait_until(serving, START_TIMEOUT_S, f"health SERVING on port {container.port}")
    logs = container.logs()
    # Configured from the mounted file and the environment, and running as the image's user.
    assert "max_batch_size=16" in logs and "/etc/sidelight/config.yaml" in logs, logs
    assert re.search(rf"environment: [^;]*\bport={container.port}\b", logs), logs
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    refused = podman("exec", container.name, "touch", "/opt/sidelight/x", check=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr

    digits = (load_digits().images[:4] / 16.0).astype(np.float32)[:, None]
    with Client(f"127.0.0.1:{container.port}", timeout=60) as client:
        answer = client.explain("digits", digits, "saliency", targets=[])
    outputs, attributions = to_array(answer.outputs), to_array(answer.attributions)
    assert outputs.shape == (4, 10)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
    assert attributions.shape == (4, 1, 8, 8)
    assert np.isfinite(attributions).all() and np.abs(attributions).sum() > 0
    assert answer.explanation_id  # recorded in the audit volume first (strict mode)

    # SIGTERM, as `podman stop` / the kubelet sends it: health NOT_SERVING, drain, exit 0.
    podman("stop", "--time", "60", container.name, timeout=90)
    assert container.state() == "exited"
    code = podman("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip()
    logs = container.logs()
    assert "stopping: health NOT_SERVING" in logs, logs
    assert code == "0", logs
