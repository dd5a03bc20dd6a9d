"""Health, reflection, Prometheus exposition, internal errors, and SIGTERM on the real command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerThread, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sidelight.client import CHANNEL_OPTIONS, explain_request
from sidelight.errors import InvalidTensor
from sidelight.transport.status import status_for
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc


def test_health_serves_overall_and_per_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sidelight.v1.Explainer"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {
        "sidelight.v1.Explainer",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= services
    infer = database.FindFileContainingSymbol("inference.ModelInferRequest")
    assert infer.package == "inference"
    explain = database.FindFileContainingSymbol("sidelight.v1.ExplainRequest")
    assert explain.package == "sidelight.v1"


def test_metrics_exposition(server: ServerThread, channel: grpc.Channel) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
    stub.Explain(explain_request("digits", x, "integrated_gradients", params={"n_steps": 64}))
    with pytest.raises(grpc.RpcError):
        stub.Explain(explain_request("someone-typed-this", x, "saliency"))
    url = f"http://127.0.0.1:{server.service.endpoints.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for expected in (
        'sidelight_rpc_duration_seconds_bucket{code="OK",le="0.005",method="integrated_gradients",'
        'model="digits",rpc="Explain"}',
        'sidelight_rpc_duration_seconds_count{code="NOT_FOUND",method="saliency",'
        'model="unknown",rpc="Explain"}',
        'sidelight_batch_size_instances_bucket{device="cpu",le="2.0",model="digits",'
        'task="integrated_gradients"}',
        'sidelight_queue_depth_instances{model="digits"} 0.0',
        'sidelight_rpc_in_flight{rpc="Explain"}',
        "sidelight_models_loaded 4.0",
        'sidelight_model_info{device="cpu",format="onnx",model="breast_cancer_onnx",'
        'version="1"} 1.0',
        "sidelight_job_queue_up 1.0",
        'sidelight_model_info{device="cpu",format="torch_export",model="digits",version="1"} 1.0',
        'sidelight_model_info{device="cpu",format="torchscript",model="tiny_torchscript",'
        'version="1"} 1.0',
        'sidelight_relative_completeness_error_count{method="integrated_gradients",model="digits"}',
        'sidelight_model_evaluations_total{method="integrated_gradients",model="digits"}',
    ):
        assert expected in text, expected
    # What a client typed never becomes a label.
    assert "someone-typed-this" not in text


def test_unexpected_error_is_internal_and_leaks_nothing() -> None:
    code, message = status_for(RuntimeError("secret path /etc/shadow"))
    assert code == grpc.StatusCode.INTERNAL
    assert "shadow" not in message and "incident" in message
    code, message = status_for(InvalidTensor("inputs.shape", "bad"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "inputs.shape: bad"


@pytest.mark.slow
def test_sigterm_drains_then_exits(model_repository: Path, tmp_path: Path) -> None:
    """The real `sidelight serve`: SIGTERM turns health NOT_SERVING, the call in flight
    completes, the process exits 0."""
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidelight.cli",
            "serve",
            "--model-repository",
            str(model_repository),
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--grace-period",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    with process, log:
        drain_on_sigterm(process, tmp_path / "serve.log")


def drain_on_sigterm(process: subprocess.Popen[str], log: Path) -> None:
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+), metrics on (\S+);", line)
        assert match, line + log.read_text()
        address, metrics = f"127.0.0.1:{match.group(1)}", match.group(2)
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
            long_call = stub.Explain.future(
                explain_request("digits", x, "integrated_gradients", params={"n_steps": 4096}),
                timeout=300,
            )
            # The call is in the server (its in-flight gauge says so) before SIGTERM.
            wait_until(lambda: explains_in_flight(metrics) >= 1, 30, "the call to arrive")
            process.send_signal(signal.SIGTERM)

            def not_serving() -> object:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    return "refused"
                return status if status != health_pb2.HealthCheckResponse.SERVING else None

            status = wait_until(not_serving, 30, "health to leave SERVING")
            assert status in (health_pb2.HealthCheckResponse.NOT_SERVING, "refused")
            reply = long_call.result()
            assert list(reply.attributions.shape) == [1, 1, 8, 8]
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_list_models_describes_inputs_and_methods(channel: grpc.Channel) -> None:
    models = {
        m.name: m for m in pb_grpc.ExplainerStub(channel).ListModels(pb.ListModelsRequest()).models
    }
    digits = models["digits"]
    assert list(digits.input.shape) == [1, 8, 8]
    assert (digits.input.min, digits.input.max) == (0.0, 1.0)
    assert digits.output_kind == "logits" and len(digits.labels) == 10
    shapes = {m.name: m.attribution_shape for m in digits.methods}
    assert shapes["grad_cam"] == "layer" and shapes["saliency"] == "input"
    schema = next(m.params_schema for m in digits.methods if m.name == "integrated_gradients")
    assert '"n_steps"' in schema
    cancer = models["breast_cancer"]
    assert len(cancer.input.feature_names) == 30 and "mean radius" in cancer.input.feature_names


def explains_in_flight(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    found = re.search(r'^sidelight_rpc_in_flight\{rpc="Explain"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0
