"""The dev overlay, run: `podman kube play` starts the API, the worker and Redis from the
rendered manifests (deploy/overlays/dev, adapted as tests/image/kube_play.py records) and the
image of `make image`; a job goes in through the API's port, the worker pod runs it, and its
result and audit record come back. Then both Sidelight pods are stopped with SIGTERM and must
drain and exit 0.

Deselected from `make test` (marker `image`); `make image-test` runs it after the image test.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from audit.support import PostgresServer, create_database, postgres_bin
from conftest import scrape_metrics, wait_until
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from kube_play import Playable, Ports, playable, podman_secret
from sidelight.client import Client, to_array
from sidelight.v1 import explainer_pb2 as pb
from sklearn.datasets import load_breast_cancer
from test_image import CONTAINERS_CONF, INSTALL, free_port, health

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SIDELIGHT_IMAGE", "sidelight:0.1.0")
REDIS_IMAGE = os.environ.get("SIDELIGHT_REDIS_STANDIN", "localhost/sidelight-redis-standin:7")
PODMAN = ["podman", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
# Both pods build the demo models in an init container first (a minute or two each, side by
# side on two cores), then load them.
START_TIMEOUT_S = 480.0

pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    answer = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=environ
    )
    if check and answer.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {answer.stdout}{answer.stderr}")
    return answer


def audit_keys() -> dict[str, bytes]:
    """The audit keys as docs/deploy.md has an operator make them (openssl there)."""
    signing = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "audit-signing-key.pem": signing,
        "audit-master-key": base64.b64encode(secrets.token_bytes(32)) + b"\n",
        "input-hmac.key": base64.b64encode(secrets.token_bytes(32)) + b"\n",
    }


@dataclass
class Deployment:
    play: Playable
    ports: Ports
    manifest: Path

    def pod(self, deployment: str) -> str:
        return f"{deployment}-pod-0"  # podman's name for a Deployment's one replica

    def container(self, deployment: str, name: str = "sidelight") -> str:
        return f"{self.pod(deployment)}-{name}"

    def logs(self, deployment: str, name: str = "sidelight") -> str:
        answer = podman("logs", self.container(deployment, name), check=False)
        return answer.stdout + answer.stderr

    def state(self, deployment: str, name: str = "sidelight") -> str:
        answer = podman(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
            self.container(deployment, name), check=False,
        )  # fmt: skip
        return answer.stdout.strip()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    for tool, install in (("podman", INSTALL), ("runc", INSTALL), ("kubectl", "kubectl")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed: {install}")
    for image, how in ((IMAGE, "make image"), (REDIS_IMAGE, "make image-redis-standin")):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"no image {image}: `{how}` builds it")
    bindir = postgres_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / "dev")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    folder = tmp_path_factory.mktemp("kube-play")
    postgres = PostgresServer(bindir)
    ports = Ports(free_port(), free_port(), free_port(), free_port())
    play = playable(
        [doc for doc in yaml.safe_load_all(rendered) if doc],
        ports=ports,
        audit_url=create_database(postgres.admin_url),
        redis_image=REDIS_IMAGE,
        secret_files={"sidelight-audit-keys": audit_keys()},
        folder=folder / "secrets",
    )
    manifest = folder / "dev-overlay.yaml"
    manifest.write_text(yaml.safe_dump_all(play.documents, sort_keys=False))
    for name, data in play.secrets.items():
        podman("secret", "rm", name, check=False)
        source = folder / f"{name}.json"
        source.write_bytes(podman_secret(data))
        podman("secret", "create", name, str(source))
    deployed = Deployment(play, ports, manifest)
    try:
        # It returns once the init containers (the demo models' build) have run.
        podman("kube", "play", "--replace", str(manifest), timeout=START_TIMEOUT_S)
        yield deployed
    finally:
        for deployment_name, container in (
            ("sidelight-redis", "redis"),
            ("sidelight-api", "build-demo-models"),
            ("sidelight-api", "sidelight"),
            ("sidelight-worker", "sidelight"),
        ):
            print(f"--- {deployment_name}/{container}")
            print(deployed.logs(deployment_name, container)[-4000:])
        podman("kube", "down", str(manifest), check=False, timeout=180)
        for name in play.secrets:
            podman("secret", "rm", name, check=False)
        postgres.remove()


def test_the_dev_overlay_runs_a_job_from_api_to_worker(deployment: Deployment) -> None:
    ports = deployment.ports

    def started(name: str, ready: object) -> object:
        state = deployment.state(name)
        if state and not state.startswith(("running", "created", "configured", "initialized")):
            logs = deployment.logs(name)
            raise AssertionError(f"{name} stopped while starting ({state}):\n{logs}")
        return ready

    def api_serving() -> bool:
        # Explain is ready once the models are loaded; jobs once Redis answers too (its pod
        # is played last).
        ready = all(
            health(ports.api_grpc, service) == 1
            for service in ("sidelight.v1.Explainer", "sidelight.v1.Explainer.jobs")
        )
        return bool(started("sidelight-api", ready))

    def worker_answering() -> bool:
        try:
            ready = bool(scrape_metrics(ports.worker_metrics))
        except OSError:
            ready = False
        return bool(started("sidelight-worker", ready))

    wait_until(api_serving, START_TIMEOUT_S, f"the API pod SERVING on {ports.api_grpc}")
    wait_until(worker_answering, START_TIMEOUT_S, "the worker pod's /metrics")
    api_logs = deployment.logs("sidelight-api")
    # Configured as the manifests say: the ConfigMap's file, the Secrets' URLs (masked), the
    # ports moved by SIDELIGHT_* variables.
    assert "/etc/sidelight/config/serve.yaml" in api_logs, api_logs
    assert "embedded_workers=0" in api_logs, api_logs
    assert "dev-only-redis" not in api_logs, "the Redis password is in the log"

    rows = load_breast_cancer().data[400:403].astype(np.float32)
    with Client(f"127.0.0.1:{ports.api_grpc}", timeout=60) as client:
        job = client.submit_job(
            "breast_cancer", rows, "kernel_shap", params={"n_samples": 256, "seed": 3}
        )
        done = None
        for update in client.watch_job(job.job_id, timeout=240):
            done = update
        assert done is not None and done.state == pb.JobState.SUCCEEDED, done
        attributions = to_array(done.result.attributions)
        assert attributions.shape == rows.shape and np.isfinite(attributions).all()
        # Kernel SHAP's attributions sum to f(x) - f(baseline): the worker really ran it.
        assert max(abs(e) for e in done.result.quality.completeness_error) < 1e-4
        record = client.stub.GetAuditRecord(
            pb.GetAuditRecordRequest(record_id=done.result.explanation_id), timeout=30
        )
        assert json.loads(record.content_json)["method"] == "kernel_shap"
    # The worker pod ran it (the API runs no job), and both pods export their figures.
    assert job.job_id in deployment.logs("sidelight-worker")
    worker = scrape_metrics(ports.worker_metrics)
    assert any(
        key.startswith("sidelight_job_deliveries_total") and 'outcome="succeeded"' in key
        for key in worker
    ), worker
    api = scrape_metrics(ports.api_metrics)
    assert api["sidelight_job_queue_up"] == 1
    assert api["sidelight_job_queue_oldest_waiting_seconds"] == 0

    # One run of the audit CronJob, its job's pod played as written (the keys and the database
    # URL from its Secret volumes): it verifies the worker's record in PostgreSQL and signs,
    # and the API exports the outcome.
    run = deployment.manifest.with_name("audit-verify-run.yaml")
    run.write_text(yaml.safe_dump(deployment.play.cron_runs["sidelight-audit-verify"]))
    try:
        podman("kube", "play", str(run), timeout=180)
        container = "sidelight-audit-verify-run-verify"

        def finished() -> str | None:
            state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                           container).stdout.strip()  # fmt: skip
            return state if state.startswith("exited") else None

        state = wait_until(finished, 180, "the audit-verify run to end")
        logs = podman("logs", container, check=False)
        assert state == "exited 0", logs.stdout + logs.stderr
    finally:
        podman("kube", "down", str(run), check=False, timeout=120)
    report = json.loads(logs.stdout)
    assert report["ok"] and report["records_checked"] >= 1, logs.stdout
    assert report["checkpoint"]["seq"] == report["last_seq"], logs.stdout
    signed = wait_until(
        lambda: scrape_metrics(ports.api_metrics).get("sidelight_audit_last_verification_success"),
        60,
        "the verification's outcome in the API's metrics (cached up to 30 s)",
    )
    assert signed == 1

    # SIGTERM to both pods, as the kubelet sends it: they drain and exit 0.
    for name in ("sidelight-api", "sidelight-worker"):
        podman("pod", "stop", "--time", "60", deployment.pod(name), timeout=120)
        assert deployment.state(name) == "exited 0", deployment.logs(name)
    assert "stopping: health NOT_SERVING" in deployment.logs("sidelight-api")
    print("\n".join(["adaptations of the dev overlay:", *deployment.play.adaptations]))


def test_every_adaptation_is_recorded_and_nothing_is_played_unseen(deployment: Deployment) -> None:
    documents = list(yaml.safe_load_all(deployment.manifest.read_text()))
    played = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for doc in documents)
    assert played[0].startswith("ConfigMap/sidelight-config-"), played
    assert played[1:] == [
        "Deployment/sidelight-api",
        "Deployment/sidelight-redis",
        "Deployment/sidelight-worker",
    ]
    text = "\n".join(deployment.play.adaptations)
    for skipped in ("NetworkPolicy/", "Service/", "CronJob/", "StatefulSet/sidelight-postgresql"):
        assert skipped in text, text
