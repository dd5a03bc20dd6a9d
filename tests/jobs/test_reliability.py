"""Nothing accepted is lost: real `redis-server` (append-only file on), a real server, real
`sidelight worker` processes, and the failures that happen in production: a worker killed
with -9 mid-job, Redis killed and restarted, a job that crashes every worker that takes it,
a worker asked to stop mid-job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from conftest import RedisServer, ServerThread, server_settings, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sidelight.client import TERMINAL_JOB_STATES, explain_request
from sidelight.jobs.redis_queue import RedisJobQueue
from sidelight.jobs.spec import JobState
from sidelight.settings import JobSettings, QueueSettings
from sidelight.transport.server import JOBS_SERVICE_NAME, SERVICE_NAME
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from sklearn.datasets import load_digits

pytestmark = pytest.mark.slow

QUEUE = QueueSettings(lease_seconds=2.0, max_deliveries=3)
HERE = Path(__file__).parent


def digit_images(count: int, start: int = 1500) -> np.ndarray:
    return (load_digits().images[start : start + count] / 16.0).astype(np.float32)[:, None]


class Workers:
    """`sidelight worker` in a subprocess (a supervisor and its children when processes > 1)."""

    def __init__(
        self,
        repository: Path,
        redis_url: str,
        processes: int,
        *extra: str,
        name: str = "test-worker",
    ) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidelight.cli",
                "worker",
                "--model-repository",
                str(repository),
                "--redis-url",
                redis_url,
                "--processes",
                str(processes),
                "--name",
                name,
                "--lease-seconds",
                str(QUEUE.lease_seconds),
                "--max-deliveries",
                str(QUEUE.max_deliveries),
                "--metrics-port",
                "-1",
                "--torch-threads",
                "1",
                # The workers record each result in an audit log of their own (SQLite).
                "--audit-dir",
                tempfile.mkdtemp(prefix="sidelight-audit-"),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def children(self) -> list[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                    command = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                if parent == self.process.pid and b"spawn_main" in command:
                    found.append(int(entry.name))
        return found

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def redis_job_server(model_repository: Path, redis_server: RedisServer) -> Iterator[ServerThread]:
    settings = replace(
        server_settings(model_repository),
        jobs=JobSettings(redis_url=redis_server.url, queue=QUEUE),
    )
    running = ServerThread(settings)
    yield running
    running.stop()


def submit(stub: pb_grpc.ExplainerStub, images: np.ndarray, **params: object) -> pb.Job:
    request = explain_request("digits", images, "kernel_shap", params=params)
    return stub.SubmitJob(request, timeout=10)  # type: ignore[no-any-return]


def wait_all(stub: pb_grpc.ExplainerStub, job_ids: list[str], timeout: float) -> list[pb.Job]:
    """Every job once all have ended. Polled (not watched): Redis may be down meanwhile."""

    def ended() -> list[pb.Job] | None:
        jobs = [stub.GetJob(pb.GetJobRequest(job_id=j), timeout=10) for j in job_ids]
        return jobs if all(job.state in TERMINAL_JOB_STATES for job in jobs) else None

    jobs: list[pb.Job] = wait_until(ended, timeout, f"{len(job_ids)} jobs to end")
    return jobs


def test_a_worker_killed_mid_job_loses_nothing(
    model_repository: Path, redis_server: RedisServer, redis_job_server: ServerThread
) -> None:
    """kill -9 a worker process while it holds a job: every job ends SUCCEEDED exactly once,
    with one result; nothing is left pending; jobs of the live worker are never taken from it
    although each runs longer than the lease (renewal)."""
    with redis_job_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        jobs = [
            submit(stub, digit_images(2, 1500 + 2 * k), n_samples=1024, seed=k).job_id
            for k in range(6)
        ]
        workers = Workers(model_repository, redis_server.url, 2)
        try:
            queue = redis_job_server.service.jobs
            wait_until(lambda: queue.stats().jobs[JobState.RUNNING] == 2, 120, "two running jobs")
            children = workers.children()
            assert len(children) == 2
            victim = children[0]
            os.kill(victim, signal.SIGKILL)
            finished = wait_all(stub, jobs, timeout=240)
        finally:
            assert workers.stop() == 0
    assert all(job.state == pb.JobState.SUCCEEDED for job in finished), [
        (pb.JobState.Name(job.state), job.error) for job in finished
    ]
    stats = redis_job_server.service.jobs.stats()
    assert stats.pending == 0 and stats.lag == 0 and stats.dead_letters == 0
    assert stats.jobs[JobState.SUCCEEDED] == len(jobs)  # each ended SUCCEEDED once
    assert stats.jobs[JobState.RUNNING] == 0 and stats.jobs[JobState.QUEUED] == 0
    deliveries = sorted(job.deliveries for job in finished)
    assert deliveries[-1] >= 2, deliveries  # the killed worker's job ran again
    assert deliveries.count(1) >= len(jobs) - 2, deliveries  # the others: once
    for job in finished:
        assert job.result.quality.model_evaluations > 0
        assert max(abs(e) for e in job.result.quality.completeness_error) < 1e-5


def test_redis_restarted_keeps_every_accepted_job(
    model_repository: Path, redis_server: RedisServer, redis_job_server: ServerThread
) -> None:
    """Jobs accepted before Redis is killed (-9) are there after it restarts from its
    append-only file; while it is down, submit answers UNAVAILABLE quickly and the jobs'
    readiness is NOT_SERVING (the server's own stays SERVING: synchronous calls need no
    Redis); the server recovers without a restart."""
    with redis_job_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        health = health_pb2_grpc.HealthStub(channel)

        def readiness() -> int:
            request = health_pb2.HealthCheckRequest(service=JOBS_SERVICE_NAME)
            return int(health.Check(request, timeout=5).status)

        accepted = [submit(stub, digit_images(1, 1600 + k), n_samples=64).job_id for k in range(5)]
        # Redis has written them to its append-only file (a process kill loses nothing
        # written; appendfsync everysec covers a machine crash within a second).
        aof = redis.Redis.from_url(redis_server.url)
        wait_until(lambda: aof.info("persistence")["aof_buffer_length"] == 0, 10, "the AOF write")
        aof.close()
        redis_server.kill()

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            submit(stub, digit_images(1), n_samples=64)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5
        assert "job queue" in refused.value.details()
        wait_until(
            lambda: readiness() == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "NOT_SERVING"
        )
        for service in ("", SERVICE_NAME):  # alive, and ready for synchronous calls
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING

        redis_server.start()
        wait_until(lambda: readiness() == health_pb2.HealthCheckResponse.SERVING, 15, "SERVING")
        accepted.append(submit(stub, digit_images(1, 1700), n_samples=64).job_id)
        workers = Workers(model_repository, redis_server.url, 1)
        try:
            finished = wait_all(stub, accepted, timeout=120)
        finally:
            assert workers.stop() == 0
    assert [pb.JobState.Name(job.state) for job in finished] == ["SUCCEEDED"] * 6


def test_a_job_that_crashes_every_worker_is_dead_lettered(
    model_repository: Path, redis_server: RedisServer, redis_job_server: ServerThread
) -> None:
    """The worker dies (os._exit) each time it takes the job; restarted, it takes the job
    back; after max_deliveries the job goes to the dead letters, FAILED, and the worker goes
    on with the next job."""
    options = {
        "repository": str(model_repository),
        "redis_url": redis_server.url,
        "queue": {"lease_seconds": QUEUE.lease_seconds, "max_deliveries": QUEUE.max_deliveries},
        "name": "crashing",
    }
    with redis_job_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        request = explain_request(
            "digits", digit_images(1), "kernel_shap", request_id="crash-1", params={"n_samples": 64}
        )
        poison = stub.SubmitJob(request, timeout=10).job_id
        healthy = submit(stub, digit_images(1, 1780), n_samples=64).job_id
        starts = 0
        while stub.GetJob(pb.GetJobRequest(job_id=healthy)).state not in TERMINAL_JOB_STATES:
            assert starts <= QUEUE.max_deliveries + 1, "the poison job loops"
            starts += 1
            worker = subprocess.Popen(
                [sys.executable, str(HERE / "crashing_worker.py"), json.dumps(options)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(60)  # dies on the poison job, or is stopped below
            if worker.poll() is None:
                wait_all(stub, [healthy], timeout=60)
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
        failed = stub.GetJob(pb.GetJobRequest(job_id=poison), timeout=10)
        done = stub.GetJob(pb.GetJobRequest(job_id=healthy), timeout=10)
    assert starts == QUEUE.max_deliveries + 1  # three crashes, then the one that goes on
    assert failed.state == pb.JobState.FAILED
    assert "delivered 3 times" in failed.error
    assert done.state == pb.JobState.SUCCEEDED
    queue = RedisJobQueue(redis_server.url, QUEUE)
    letters = queue.dead_letters()
    assert [(d.job_id, d.deliveries) for d in letters] == [(poison, 3)]
    assert queue.stats().pending == 0
    queue.close()


def test_a_stopped_worker_hands_its_job_back(
    model_repository: Path, redis_server: RedisServer, redis_job_server: ServerThread
) -> None:
    """SIGTERM mid-job with a short grace: the worker exits, the job is QUEUED again at once
    (not after the lease), and the next worker runs it without counting a delivery."""
    with redis_job_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        job = submit(stub, digit_images(4), n_samples=1 << 20).job_id
        first = Workers(model_repository, redis_server.url, 1, "--job-grace", "0.5")
        state = lambda: stub.GetJob(pb.GetJobRequest(job_id=job), timeout=5).state  # noqa: E731
        wait_until(lambda: state() == pb.JobState.RUNNING, 120, "the job to start")
        assert first.stop(timeout=30) == 0
        assert state() == pb.JobState.QUEUED
        second = Workers(model_repository, redis_server.url, 1)
        try:
            wait_until(lambda: state() == pb.JobState.RUNNING, 60, "the job to start again")
            running = stub.GetJob(pb.GetJobRequest(job_id=job), timeout=5)
            assert running.deliveries == 1
            stub.CancelJob(pb.GetJobRequest(job_id=job), timeout=5)
            wait_until(lambda: state() == pb.JobState.CANCELLED, 30, "the cancellation")
        finally:
            assert second.stop() == 0


def test_a_dead_workers_job_is_taken_over_by_another_worker(
    model_repository: Path, redis_server: RedisServer, redis_job_server: ServerThread
) -> None:
    """The killed worker never comes back: once its lease has been idle for lease_seconds,
    a worker under another name claims the job (XAUTOCLAIM) and finishes it."""
    with redis_job_server.channel() as channel:
        stub = pb_grpc.ExplainerStub(channel)  # type: ignore[no-untyped-call]
        job = submit(stub, digit_images(2), n_samples=1024, seed=1).job_id
        state = lambda: stub.GetJob(pb.GetJobRequest(job_id=job), timeout=5).state  # noqa: E731
        doomed = Workers(model_repository, redis_server.url, 1, name="doomed")
        wait_until(lambda: state() == pb.JobState.RUNNING, 120, "the job to start")
        doomed.process.kill()  # -9: no hand-back, no acknowledgement
        doomed.process.wait(10)
        heir = Workers(model_repository, redis_server.url, 1, name="heir")
        try:
            (finished,) = wait_all(stub, [job], timeout=180)
        finally:
            assert heir.stop() == 0
    assert finished.state == pb.JobState.SUCCEEDED
    assert finished.deliveries == 2
    assert redis_job_server.service.jobs.stats().pending == 0
