"""A Redis that is down or hung (SIGSTOP: connections open, nothing answered) costs the calls
that need it an UNAVAILABLE in bounded time, and costs every other call nothing: synchronous
explanations and audit reads answer at once, and the service stays ready for them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import RedisServer, ServerThread, server_settings, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidelight.client import explain_request
from sidelight.settings import JobSettings
from sidelight.transport.server import JOBS_SERVICE_NAME, SERVICE_NAME
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# More calls waiting on Redis than the event loop's default pool has threads (cores + 4).
WAITING_CALLS = 16


@pytest.fixture
def redis_server_thread(
    model_repository: Path, redis_server: RedisServer
) -> Iterator[ServerThread]:
    jobs = JobSettings(redis_url=redis_server.url, redis_timeout_s=1.0)
    server = ServerThread(replace(server_settings(model_repository), jobs=jobs))
    yield server
    if redis_server.process is not None:
        redis_server.process.send_signal(signal.SIGCONT)
    server.stop()


def digits() -> np.ndarray:
    return np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)


def status_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_hung_redis_delays_no_other_call_and_answers_unavailable_in_bounded_time(
    redis_server: RedisServer, redis_server_thread: ServerThread
) -> None:
    server = redis_server_thread
    in_flight = server.service.metrics.rpc_in_flight.labels("GetJob")
    with server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)
        unknown = pb.GetJobRequest(job_id="0" * 32)
        assert status_of(lambda: stub.GetJob(unknown, timeout=10)) == grpc.StatusCode.NOT_FOUND
        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        details: list[str] = []

        def get_job() -> grpc.StatusCode:
            try:
                stub.GetJob(unknown, timeout=30)
            except grpc.RpcError as exc:
                details.append(str(exc.details()))
                return exc.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(WAITING_CALLS) as pool:
            waiting = [pool.submit(get_job) for _ in range(WAITING_CALLS)]
            wait_until(lambda: in_flight._value.get() >= WAITING_CALLS, 10, "calls on Redis")
            # Unrelated calls: an audit read and a synchronous explanation, at once.
            before = time.monotonic()
            record = pb.GetAuditRecordRequest(record_id="0" * 32)
            code = status_of(lambda: stub.GetAuditRecord(record, timeout=10))
            assert code == grpc.StatusCode.NOT_FOUND
            explained = stub.Explain(explain_request("digits", digits(), "saliency"), timeout=10)
            assert len(explained.explanation_id) == 32
            assert time.monotonic() - before < 1.0
            codes = [future.result() for future in waiting]
        assert codes == [grpc.StatusCode.UNAVAILABLE] * WAITING_CALLS
        # Each waits at most for a thread, then for its own command: two timeouts.
        assert time.monotonic() - started < 2 * 1.0 + 2.0
        port = str(redis_server.port)
        assert not any(port in text or "127.0.0.1" in text for text in details), details[0]


def test_redis_down_takes_only_the_jobs_readiness_away(
    redis_server: RedisServer, redis_server_thread: ServerThread
) -> None:
    server = redis_server_thread
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.ExplainerStub(channel)

        def status(service: str) -> int:
            request = health_pb2.HealthCheckRequest(service=service)
            return int(health.Check(request, timeout=5).status)

        wait_until(lambda: status(JOBS_SERVICE_NAME) == SERVING, 10, "jobs SERVING")
        redis_server.kill()
        wait_until(lambda: status(JOBS_SERVICE_NAME) == NOT_SERVING, 10, "jobs NOT_SERVING")
        # Synchronous traffic is still served, and said to be: a probe keeps the pod in.
        assert status(SERVICE_NAME) == SERVING
        assert status("inference.GRPCInferenceService") == SERVING
        assert server.service.readiness.ready
        stub.Explain(explain_request("digits", digits(), "saliency"), timeout=10)
        redis_server.start()
        wait_until(lambda: status(JOBS_SERVICE_NAME) == SERVING, 15, "jobs SERVING again")
