"""100 concurrent calls with mixed models, methods and targets through the real server: each gets
its own result, equal to the same request computed alone in process (no batching)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import TINY_FEATURES, ServerThread, server_settings
from sidelight.client import CHANNEL_OPTIONS, explain_request, to_array
from sidelight.explanations import run_explain
from sidelight.methods.catalog import METHODS
from sidelight.models.registry import ModelRegistry
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

CALLS = 100
MIX = [
    ("digits", "saliency", {}),
    ("digits", "grad_cam", {}),
    ("digits", "integrated_gradients", {"n_steps": 16}),
    ("digits", "smoothgrad", {"samples": 4, "seed": 11}),
    ("digits", "guided_backprop", {}),
    ("breast_cancer", "input_x_gradient", {}),
    ("breast_cancer", "deeplift", {}),
    ("tiny_torchscript", "saliency", {"abs": False}),
]


def random_inputs(model: str, n: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if model == "digits":
        return rng.random((n, 1, 8, 8), dtype=np.float32)
    if model == "breast_cancer":
        return (rng.random((n, 30), dtype=np.float32) * 100).astype(np.float32)
    return rng.normal(size=(n, TINY_FEATURES)).astype(np.float32)


def make_calls() -> list[dict[str, Any]]:
    rng = np.random.default_rng(42)
    calls = []
    for index in range(CALLS):
        model, method, params = MIX[index % len(MIX)]
        n = int(rng.integers(1, 4))
        classes = {"digits": 10, "breast_cancer": 2, "tiny_torchscript": 3}[model]
        targets = [int(t) for t in rng.integers(0, classes, size=n)] if index % 3 else []
        calls.append(
            {
                "model": model,
                "method": method,
                "params": params,
                "inputs": random_inputs(model, n, rng),
                "targets": targets,
            }
        )
    return calls


async def send_all(address: str, calls: list[dict[str, Any]]) -> list[Any]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        requests = [
            explain_request(
                c["model"],
                c["inputs"],
                c["method"],
                targets=c["targets"],
                params=c["params"],
                request_id=f"call-{i}",
            )
            for i, c in enumerate(calls)
        ]
        return await asyncio.gather(*(stub.Explain(r, timeout=120) for r in requests))


def alone(registry: ModelRegistry, call: dict[str, Any]) -> Any:
    """The same request computed in process, by itself, without the scheduler."""
    model = registry.get(call["model"]).primary
    method = METHODS[call["method"]]
    params = dict(call["params"])
    seed = params.pop("seed", 0)
    n = len(call["inputs"])
    targets = call["targets"] or [-1]
    return run_explain(
        method,
        method.params_type(**params),
        model,
        torch.from_numpy(call["inputs"]),
        torch.tensor(targets * (n if len(targets) == 1 else 1), dtype=torch.int64),
        torch.full((n,), seed, dtype=torch.int64),
        10_000,
    )


@pytest.fixture(scope="module")
def two_lanes(model_repository: Path) -> Iterator[ServerThread]:
    """Two CPU lanes that take every group: batches of the hooking methods (Grad-CAM, guided
    backprop, DeepLIFT) run side by side, each lane on its own copy of the models."""
    running = ServerThread(
        server_settings(model_repository, cpu_lanes=2, extra_lane_min_call_ms=0.0)
    )
    yield running
    running.stop()


@pytest.mark.slow
@pytest.mark.parametrize("serving", ["server", "two_lanes"])
def test_hundred_concurrent_mixed_calls(
    serving: str, registry: ModelRegistry, request: pytest.FixtureRequest
) -> None:
    server: ServerThread = request.getfixturevalue(serving)
    calls = make_calls()
    if serving == "two_lanes":
        # One call of each kind first, one at a time: the first lane runs each group's first
        # batch and marks it heavy, so the second lane may take the burst's batches. Without
        # it, when the burst queues whole before a lane wakes, the first lane takes each group
        # in one batch and marks it only once it is empty (seen in CI: {0: 9, 1: 0}).
        for call in calls[: len(MIX)]:
            asyncio.run(send_all(server.address, [call]))
    replies = asyncio.run(send_all(server.address, calls))
    assert len(replies) == CALLS
    for index, (call, reply) in enumerate(zip(calls, replies, strict=True)):
        assert reply.request_id == f"call-{index}"
        assert reply.model == call["model"] and reply.method == call["method"]
        expected = alone(registry, call)
        attributions = to_array(reply.attributions)
        scale = max(1.0, float(np.abs(expected.attributions).max()))
        np.testing.assert_allclose(attributions, expected.attributions, atol=1e-5 * scale, rtol=0)
        np.testing.assert_allclose(to_array(reply.outputs), expected.outputs, atol=1e-5)
        assert list(reply.targets) == expected.targets.tolist()
        if call["targets"]:
            assert list(reply.targets) == call["targets"]
    batch_counts = server.service.metrics.registry.get_sample_value(
        "sidelight_batch_size_instances_count",
        {"model": "digits", "task": "saliency", "device": "cpu"},
    )
    assert batch_counts is not None and batch_counts >= 1
    if serving == "two_lanes":  # and the second lane did take some of them
        runs = {e.lane: e.batches_run for e in server.service.executors}
        assert runs.keys() == {0, 1} and runs[1] > 0, runs
