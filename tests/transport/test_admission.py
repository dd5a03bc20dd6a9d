"""Back-pressure, deadlines, cancellation and graceful shutdown, through real servers.

Each test occupies the single CPU executor with a long "blocker" explanation, and decides what to
do next from the server's own gauges (never from sleeping), so the tests hold on a slow machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import ServerThread, server_settings, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidelight.client import explain_request
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow


def one_digit(seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).random((1, 1, 8, 8), dtype=np.float32)


# One instance (the queue limits below are counted in instances), 1,024 noisy copies each
# integrated over 50 steps: 51,200 rows, seconds of device time on two CPU cores, so that a
# test's steps (metrics polled, a call cancelled) happen while it runs. At 256 copies it once
# finished before a queued call's cancellation reached the server, which had taken that call.
BLOCKER = explain_request(
    "digits",
    np.random.default_rng(9).random((1, 1, 8, 8), dtype=np.float32),
    "smoothgrad",
    params={"base": "integrated_gradients", "samples": 1024, "seed": 1},
)


def sample(server: ServerThread, name: str, **labels: str) -> float:
    value = server.service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def queued(server: ServerThread) -> float:
    return sample(server, "sidelight_queue_depth_instances", model="digits")


def blocker_running(server: ServerThread) -> bool:
    return queued(server) == 0 and sample(server, "sidelight_rpc_in_flight", rpc="Explain") >= 1


@pytest.fixture
def make_server(model_repository: Path) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(**batching: Any) -> ServerThread:
        # One lane: these tests keep the device busy with one blocker, and a second lane
        # would take what they queue behind it.
        running = ServerThread(server_settings(model_repository, **{"cpu_lanes": 1, **batching}))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


def test_full_queue_answers_resource_exhausted(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_batch_size=1, max_queue_instances=3)
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        blocker = stub.Explain.future(BLOCKER, timeout=300)
        wait_until(lambda: blocker_running(server), 60, "the blocker to run")
        accepted = [
            stub.Explain.future(explain_request("digits", one_digit(i), "saliency"), timeout=300)
            for i in range(2)
        ]
        wait_until(lambda: queued(server) == 2, 60, "two queued")
        # 2 waiting + 2 more would pass the limit of 3.
        two = np.concatenate([one_digit(5), one_digit(6)])
        with pytest.raises(grpc.RpcError) as raised:
            stub.Explain(explain_request("digits", two, "saliency"), timeout=60)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry" in raised.value.details()
        # Nothing accepted is lost: the blocker and both queued requests complete.
        assert list(blocker.result().attributions.shape) == [1, 1, 8, 8]
        for future in accepted:
            assert list(future.result().attributions.shape) == [1, 1, 8, 8]
    assert sample(server, "sidelight_requests_rejected_total", model="digits") == 1


def test_late_request_is_dropped_before_it_runs(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_batch_size=4)
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        blocker = stub.Explain.future(BLOCKER, timeout=300)
        wait_until(lambda: blocker_running(server), 60, "the blocker to run")
        with pytest.raises(grpc.RpcError) as raised:
            stub.Explain(explain_request("digits", one_digit(), "input_x_gradient"), timeout=0.3)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: queued(server) == 0, 60, "an empty queue")
        blocker.result()
    dropped = sample(
        server, "sidelight_requests_dropped_total", model="digits", reason="deadline"
    ) + sample(server, "sidelight_requests_dropped_total", model="digits", reason="cancelled")
    assert dropped == 1
    ran = sample(
        server,
        "sidelight_batch_size_instances_count",
        model="digits",
        task="input_x_gradient",
        device="cpu",
    )
    assert ran == 0, "the late request cost device time"


def test_cancelled_call_frees_its_slot(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(max_batch_size=1, max_queue_instances=1)
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        blocker = stub.Explain.future(BLOCKER, timeout=300)
        wait_until(lambda: blocker_running(server), 60, "the blocker to run")
        waiting = stub.Explain.future(explain_request("digits", one_digit(), "saliency"))
        wait_until(lambda: queued(server) == 1, 60, "one queued")
        assert waiting.cancel()
        wait_until(lambda: queued(server) == 0, 60, "an empty queue")
        assert blocker.running(), "the slot must free while the device is still busy"
        # The freed slot takes a new request at once (the queue holds one instance).
        replacement = stub.Explain.future(explain_request("digits", one_digit(2), "saliency"))
        assert list(replacement.result(timeout=300).attributions.shape) == [1, 1, 8, 8]
        blocker.result()
    assert (
        sample(server, "sidelight_requests_dropped_total", model="digits", reason="cancelled") == 1
    )


def test_graceful_shutdown(make_server: Callable[..., ServerThread]) -> None:
    server = make_server()
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        serving = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert serving.status == health_pb2.HealthCheckResponse.SERVING
        blocker = stub.Explain.future(BLOCKER, timeout=300)
        wait_until(lambda: blocker_running(server), 60, "the blocker to run")
        import asyncio

        stopping = asyncio.run_coroutine_threadsafe(server.service.stop(60), server.loop)

        def not_serving() -> bool:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            except grpc.RpcError:
                return True  # the port closed: new calls are refused
            return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

        wait_until(not_serving, 60, "NOT_SERVING")
        with pytest.raises(grpc.RpcError) as raised:
            stub.Explain(explain_request("digits", one_digit(), "saliency"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        # The call in flight finishes inside the grace period.
        assert list(blocker.result().attributions.shape) == [1, 1, 8, 8]
        stopping.result(120)


def test_a_running_batch_counts_as_in_flight_until_answered(
    make_server: Callable[..., ServerThread],
) -> None:
    """Background work (the faithfulness sampler) waits for the device to be idle: nothing
    queued AND nothing being computed. A batch that left the queue still counts."""
    server = make_server(max_batch_size=1)
    scheduler = server.service.scheduler
    assert scheduler.in_flight_instances == 0
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        blocker = stub.Explain.future(BLOCKER, timeout=300)
        wait_until(lambda: blocker_running(server), 60, "the blocker to run")
        assert scheduler.queued_instances == 0 and scheduler.in_flight_instances == 1
        assert scheduler.idle_for() == 0.0
        blocker.result()
    wait_until(lambda: scheduler.in_flight_instances == 0, 60, "nothing in flight")
    first = scheduler.idle_for()
    assert first > 0
    # The idle clock runs on while nothing comes.
    wait_until(lambda: scheduler.idle_for() >= first + 0.04, 5, "the idle clock to run")


def test_a_second_lane_answers_while_the_first_is_busy(
    make_server: Callable[..., ServerThread],
) -> None:
    """Two lanes on the CPU: a long batch on one does not hold up a request the other may run.
    (The second lane takes groups marked heavy after a batch; here every group is.)"""
    server = make_server(cpu_lanes=2, extra_lane_min_call_ms=0.0)
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        # A first saliency batch marks its group.
        stub.Explain(explain_request("digits", one_digit(4), "saliency"), timeout=60)
        blocker = stub.Explain.future(BLOCKER, timeout=300)
        wait_until(lambda: blocker_running(server), 60, "the blocker to run")
        answer = stub.Explain(explain_request("digits", one_digit(3), "saliency"), timeout=60)
        assert list(answer.attributions.shape) == [1, 1, 8, 8]
        assert blocker.running(), "the second request waited for the first lane"
        assert list(blocker.result().attributions.shape) == [1, 1, 8, 8]
