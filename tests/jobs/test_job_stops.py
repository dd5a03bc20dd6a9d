"""A job of a gradient method stops like a perturbation job: between model calls, on CancelJob,
its deadline, lease loss and shutdown; a budget it cannot meet is refused at submission.

A real server on a free port with its queue on a real `redis-server`, and a real `Worker`
(a thread of this process, so that a test can ask it to shut down and see its outcomes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import torch
from conftest import RedisServer, ServerThread, server_settings, wait_until, watch_job
from sidelight.client import explain_request
from sidelight.jobs.redis_queue import RedisJobQueue
from sidelight.jobs.runner import JobRunner
from sidelight.jobs.worker import JobOutcome, Worker
from sidelight.models.registry import ModelRegistry
from sidelight.settings import JobSettings, QueueSettings
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_digits

QUEUE = QueueSettings(lease_seconds=1.5)
# Rows per model call of the test's worker: IG with 4096 steps on 8 digits is 32 calls of about
# a fifth of a second each here, so a stop between calls shows within a second.
ROWS_PER_CALL = 1024
# 8 instances x (4096 steps + 2): what the hostile caller's job spent to SUCCEEDED in 7.4 s.
BIG_IG = {"n_steps": 4096}
BIG_IG_EVALUATIONS = 8 * (4096 + 2)


def digit_images(count: int) -> np.ndarray:
    return (load_digits().images[1500 : 1500 + count] / 16.0).astype(np.float32)[:, None]


class WorkerThread:
    """A Worker on the Redis queue in a thread of the test process."""

    def __init__(self, redis_url: str, registry: ModelRegistry, grace_seconds: float) -> None:
        self.outcomes: list[JobOutcome] = []
        runner = JobRunner(registry, torch.device("cpu"), max_rows=ROWS_PER_CALL)
        self.worker = Worker(
            RedisJobQueue(redis_url, QUEUE),
            runner,
            "stops-0",
            grace_seconds=grace_seconds,
            claim_wait_seconds=0.1,
            on_outcome=self.outcomes.append,
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.shutdown.set()
        self.thread.join(60)


@pytest.fixture
def api(model_repository: Path, redis_server: RedisServer) -> Iterator[ServerThread]:
    settings = replace(
        server_settings(model_repository),
        jobs=JobSettings(redis_url=redis_server.url, queue=QUEUE),
    )
    running = ServerThread(settings)
    yield running
    running.stop()


@pytest.fixture
def stub(api: ServerThread) -> Iterator[pb_grpc.ExplainerStub]:
    with api.channel() as channel:
        yield pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def worker(redis_server: RedisServer, registry: ModelRegistry) -> Iterator[WorkerThread]:
    running = WorkerThread(redis_server.url, registry, grace_seconds=0.2)
    yield running
    running.stop()


def submit(stub: pb_grpc.ExplainerStub, count: int = 8, **params: object) -> pb.Job:
    request = explain_request(
        "digits", digit_images(count), "integrated_gradients", params=BIG_IG | params
    )
    return stub.SubmitJob(request, timeout=10)  # type: ignore[no-any-return]


def running(stub: pb_grpc.ExplainerStub, job_id: str) -> None:
    def started() -> bool:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
        return job.state == pb.JobState.RUNNING

    wait_until(started, 30, "the job to start")
    time.sleep(0.3)  # into its model calls


def test_a_gradient_job_stops_at_its_deadline(
    stub: pb_grpc.ExplainerStub, worker: WorkerThread
) -> None:
    started = time.monotonic()
    job = submit(stub, deadline_seconds=0.5)
    done = watch_job(stub, job.job_id, timeout=60)
    took = time.monotonic() - started
    # Integrated gradients has no estimate from part of its steps: FAILED, saying why.
    assert done.state == pb.JobState.FAILED, (done.state, took)
    assert "deadline" in done.error and "integrated_gradients" in done.error
    assert not done.partial and not done.HasField("result")
    assert took < 4.0  # 7.4 s to its end before
    assert 0 < done.progress.model_evaluations < BIG_IG_EVALUATIONS
    assert [o.outcome for o in worker.outcomes] == ["failed"]


def test_a_budget_a_gradient_job_cannot_meet_is_refused_at_submission(
    stub: pb_grpc.ExplainerStub, api: ServerThread, worker: WorkerThread
) -> None:
    for budget in (10, BIG_IG_EVALUATIONS - 1):
        with pytest.raises(grpc.RpcError) as refused:
            submit(stub, max_evaluations=budget)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = refused.value.details() or ""
        assert "params.max_evaluations" in details and str(BIG_IG_EVALUATIONS) in details
    assert api.service.jobs.stats().length == 0  # nothing queued
    # A budget that covers the job's passes lets it run to its full result.
    exact = submit(stub, 2, n_steps=16, max_evaluations=2 * (16 + 2))
    done = watch_job(stub, exact.job_id, timeout=60)
    assert done.state == pb.JobState.SUCCEEDED and not done.partial
    assert done.result.quality.model_evaluations == 2 * (16 + 2)


def test_cancel_stops_a_running_gradient_job(
    stub: pb_grpc.ExplainerStub, worker: WorkerThread
) -> None:
    job = submit(stub)
    running(stub, job.job_id)
    cancelled_at = time.monotonic()
    stub.CancelJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
    done = watch_job(stub, job.job_id, timeout=60)
    assert done.state == pb.JobState.CANCELLED
    wait_until(lambda: worker.outcomes, 30, "the worker to end the job")
    # The lease's heartbeat brings the cancel within a third of the lease, then one model call.
    assert time.monotonic() - cancelled_at < QUEUE.lease_seconds / 3 + 2.5
    assert [o.outcome for o in worker.outcomes] == ["cancelled"]
    assert worker.outcomes[0].evaluations < BIG_IG_EVALUATIONS


def test_a_lost_lease_stops_a_running_gradient_job(
    stub: pb_grpc.ExplainerStub, worker: WorkerThread, redis_server: RedisServer
) -> None:
    job = submit(stub)
    running(stub, job.job_id)
    client = redis.Redis.from_url(redis_server.url)
    (entry,) = client.xpending_range("sidelight:jobs", "workers", "-", "+", 10)
    client.xclaim("sidelight:jobs", "workers", "another-worker", 0, [entry["message_id"]])
    taken_at = time.monotonic()
    wait_until(lambda: worker.outcomes, 30, "the worker to give the job up")
    assert time.monotonic() - taken_at < QUEUE.lease_seconds / 3 + 2.5
    assert [o.outcome for o in worker.outcomes] == ["lost"]
    # The worker stored nothing: the job is the other worker's now.
    status = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
    assert status.state == pb.JobState.RUNNING


def test_shutdown_hands_a_running_gradient_job_back(
    stub: pb_grpc.ExplainerStub, worker: WorkerThread
) -> None:
    job = submit(stub)
    running(stub, job.job_id)
    asked_at = time.monotonic()
    worker.stop()  # grace 0.2 s
    assert not worker.thread.is_alive()
    assert time.monotonic() - asked_at < 0.2 + 2.5
    assert [o.outcome for o in worker.outcomes] == ["released"]
    status = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=10)
    assert status.state == pb.JobState.QUEUED  # for another worker, at once
