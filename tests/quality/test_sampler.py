"""The faithfulness sampler: a server that samples every explanation records deletion and
insertion scores for them in /metrics, off the request; one that samples none records none."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerThread, scrape_metrics, server_settings
from sidelight.client import explain_request
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_digits


@pytest.fixture(scope="module")
def sampling_server(model_repository: Path) -> Iterator[ServerThread]:
    # Seeded: each instance's gain is measured against one random ranking, and an unlucky draw
    # once made IG's deletion gain non-positive on 2 of 6 digits where it is on 0-1.
    settings = replace(
        server_settings(model_repository), faithfulness_sample=1.0, faithfulness_seed=0
    )
    running = ServerThread(settings)
    yield running
    running.stop()


def scrape(server: ServerThread) -> dict[str, float]:
    return scrape_metrics(server.service.endpoints.metrics_port)


def test_sampled_explanations_are_scored_in_the_background(sampling_server: ServerThread) -> None:
    images = (load_digits().images[1500:1506] / 16.0).astype(np.float32)[:, None]
    with sampling_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        stub.Explain(explain_request("digits", images, "integrated_gradients"), timeout=60)
        stub.Explain(explain_request("digits", images[:2], "grad_cam"), timeout=60)
    assert sampling_server.service.sampler is not None
    sampling_server.service.sampler.join()
    found = scrape(sampling_server)
    labels = 'method="integrated_gradients",model="digits"'
    assert found[f"sidelight_faithfulness_scored_instances_total{{{labels}}}"] == 6
    assert (
        found['sidelight_faithfulness_scored_instances_total{method="grad_cam",model="digits"}']
        == 2
    )
    for curve in ("deletion", "insertion"):
        count = found[f'sidelight_faithfulness_auc_count{{curve="{curve}",{labels}}}']
        assert count == 6
        total = found[f'sidelight_faithfulness_auc_sum{{curve="{curve}",{labels}}}']
        assert 0 <= total <= 6
    # Integrated gradients beats random rankings on digits: most gains are positive. (A
    # histogram with negative buckets exposes no _sum: count the buckets above 0.)
    gains = f'sidelight_faithfulness_gain_over_random_bucket{{curve="deletion",le="0.0",{labels}}}'
    count = found[f'sidelight_faithfulness_gain_over_random_count{{curve="deletion",{labels}}}']
    assert count == 6 and found[gains] <= 1


def test_without_sampling_nothing_is_scored(server: ServerThread) -> None:
    assert server.service.sampler is None
    images = (load_digits().images[1500:1502] / 16.0).astype(np.float32)[:, None]
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        stub.Explain(explain_request("digits", images, "saliency"), timeout=60)
    assert not any(key.startswith("sidelight_faithfulness_scored") for key in scrape(server))


def test_a_busy_device_makes_the_sampler_drop_rather_than_wait(registry: object) -> None:
    """Scoring yields to requests: while they keep the device busy past the sampler's wait,
    a sample is dropped and counted, not scored."""
    import torch
    from prometheus_client import CollectorRegistry
    from sidelight.metrics import Metrics
    from sidelight.quality.sampler import FaithfulnessSampler

    model = registry.get("digits").primary  # type: ignore[attr-defined]
    metrics = Metrics(CollectorRegistry())
    busy = [True]
    sampler = FaithfulnessSampler(
        metrics, 1.0, idle_for=lambda: 0.0 if busy[0] else 1.0, max_wait_s=0.2
    )
    images = torch.from_numpy((load_digits().images[:2] / 16.0).astype(np.float32)[:, None])
    maps = np.ones((2, 1, 8, 8), dtype=np.float32)
    targets = np.array([0, 1])
    assert sampler.offer(model, "saliency", images, maps, targets)
    sampler.join()
    dropped = metrics.faithfulness_dropped.labels("digits", "saliency", "busy")._value.get()
    assert dropped == 1
    busy[0] = False
    assert sampler.offer(model, "saliency", images, maps, targets)
    sampler.join()
    assert metrics.faithfulness_scored.labels("digits", "saliency")._value.get() == 2
    sampler.close()


def test_background_scoring_never_disturbs_the_executors_explanations(
    sampling_server: ServerThread,
) -> None:
    """Methods hook the model while they run, and a hook fires for any thread's pass through
    the module: Evaluate, the sampler and embedded workers run copies of the model, never the
    executor's. Grad-CAM requests answered while Evaluate scores on its thread (and the sampler
    scores everything) give the maps they give alone, bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    from sidelight.client import to_array
    from sidelight.transport.codec import tensor_to_proto
    from sidelight.v1 import explainer_pb2 as pb

    images = (load_digits().images[1600:1604] / 16.0).astype(np.float32)[:, None]
    with sampling_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        request = explain_request("digits", images, "grad_cam", targets=[1, 2, 3, 4])
        alone = to_array(stub.Explain(request, timeout=60).attributions)
        maps = np.abs(np.random.default_rng(0).standard_normal((8, 1, 8, 8))).astype(np.float32)
        many = (load_digits().images[1610:1618] / 16.0).astype(np.float32)[:, None]
        evaluate = pb.EvaluateRequest(
            model="digits",
            inputs=tensor_to_proto(many),
            attributions=tensor_to_proto(maps),
            metrics=["deletion", "insertion", "infidelity"],
            steps=64,
        )

        def explain(_: int) -> np.ndarray:
            return to_array(stub.Explain(request, timeout=120).attributions)

        with ThreadPoolExecutor(6) as pool:
            scoring = [pool.submit(stub.Evaluate, evaluate, timeout=300) for _ in range(3)]
            answers = list(pool.map(explain, range(60)))
            for future in scoring:
                assert len(future.result().faithfulness.deletion_auc) == 8
    for answer in answers:
        np.testing.assert_array_equal(answer, alone)
