"""Batching groups are keyed by what clients send (params, input shapes): they stay bounded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from sidelight import dataplane
from sidelight.batching.executor import DeviceExecutor
from sidelight.batching.scheduler import Scheduler
from sidelight.dataplane import DataPlane, ExplainRequest
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sidelight.settings import BatchingSettings
from sidelight.tensors import RawTensor

CPU = torch.device("cpu")


def explain_request(inputs: np.ndarray, n_steps: int) -> ExplainRequest:
    return ExplainRequest(
        model="breast_cancer",
        model_version="",
        inputs=RawTensor("FP32", inputs.shape, inputs.tobytes()),
        method="integrated_gradients",
        targets=[],
        params={"n_steps": n_steps},
        request_id="",
        deadline=None,
    )


def test_groups_are_bounded_and_evicted_groups_still_answer(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataplane, "MAX_GROUPS", 4)
    settings = BatchingSettings()
    scheduler = Scheduler(settings)
    model: Model = registry.get("breast_cancer").primary
    executor = DeviceExecutor(CPU, scheduler, lambda name, version, device: model, settings)
    executor.start()
    plane = DataPlane(registry, scheduler)
    inputs = (np.abs(np.random.default_rng(0).normal(size=(2, 30))) * 10).astype(np.float32)

    async def explain_all() -> list[dataplane.Explanation]:
        return [await plane.explain(explain_request(inputs, n)) for n in (2, 3, 4, 5, 6, 7, 2)]

    try:
        answers = asyncio.run(explain_all())
    finally:
        scheduler.close()
        executor.join(10)
    cache = plane._explain_group.cache_info()  # type: ignore[attr-defined]
    assert cache.currsize == 4 and cache.misses == 7  # n_steps=2 was evicted and made again
    # 2 instances x (n steps + f(x) and f(baseline) for the completeness check)
    steps = (2, 3, 4, 5, 6, 7, 2)
    assert [a.quality.model_evaluations for a in answers] == [2 * (n + 2) for n in steps]
    np.testing.assert_allclose(answers[0].attributions, answers[-1].attributions, rtol=0, atol=0)
