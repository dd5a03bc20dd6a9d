"""One contract, two queues: the in-process default and Redis Streams (a real `redis-server`
on a free port). Every test here runs against both; what differs is only where state lives."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
from conftest import RedisServer, wait_until
from sidelight.errors import InvalidArgument, JobNotFound, Overloaded
from sidelight.explanations import Explanation, Quality
from sidelight.jobs.memory_queue import MemoryJobQueue
from sidelight.jobs.queue import Hold, JobQueue
from sidelight.jobs.redis_queue import RedisJobQueue
from sidelight.jobs.spec import JobSpec, JobState
from sidelight.settings import QueueSettings
from sidelight.tensors import RawTensor

LEASE = 0.4


def make_queue(kind: str, redis_server: RedisServer | None, **settings: object) -> JobQueue:
    merged = replace(QueueSettings(lease_seconds=LEASE, max_deliveries=2), **settings)  # type: ignore[arg-type]
    if kind == "memory":
        return MemoryJobQueue(merged)
    assert redis_server is not None
    return RedisJobQueue(redis_server.url, merged)


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queue(kind: str, request: pytest.FixtureRequest) -> Iterator[JobQueue]:
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    opened = make_queue(kind, server)
    yield opened
    opened.close()


def spec(request_id: str = "", *, digest: str = "d1", **fields: object) -> JobSpec:
    inputs = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = JobSpec(
        job_id=uuid.uuid4().hex,
        request_id=request_id,
        model="m",
        model_version="1",
        method="kernel_shap",
        inputs=RawTensor.from_array(inputs),
        targets=(1,),
        params={"n_samples": 64, "seed": 7},
        submitted_at=time.time(),
        digest=digest,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def explanation(job: JobSpec, stopped_by: str = "") -> Explanation:
    return Explanation(
        explanation_id=uuid.uuid4().hex,
        model=job.model,
        model_version=job.model_version,
        method=job.method,
        outputs=np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32),
        targets=np.array([1, 0], dtype=np.int64),
        attributions=np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
        quality=Quality([0.0, 1e-9], [0.0, 1e-8], 130, 7, "abc", stopped_by, [0.9, 0.8]),
        request_id=job.request_id,
    )


def test_a_submitted_job_is_queued_with_its_spec(queue: JobQueue) -> None:
    job = spec("r1")
    status = queue.submit(job)
    assert (status.job_id, status.state, status.request_id) == (job.job_id, JobState.QUEUED, "r1")
    assert queue.status(job.job_id) == status
    stats = queue.stats()
    assert (stats.length, stats.lag, stats.pending) == (1, 1, 0)
    assert stats.jobs[JobState.QUEUED] == 1


def test_the_oldest_waiting_jobs_age_follows_the_front_of_the_queue(queue: JobQueue) -> None:
    assert queue.stats().oldest_waiting_s == 0.0  # nothing waits
    first = spec("first")
    queue.submit(first)
    time.sleep(0.3)
    queue.submit(spec("second"))
    waited = queue.stats().oldest_waiting_s
    assert 0.25 <= waited < 5.0  # the first job's age, not the second's
    lease = queue.claim("worker-a", 1.0)
    assert lease is not None and lease.spec.job_id == first.job_id
    assert queue.stats().oldest_waiting_s < waited  # now the second job is the front
    assert queue.claim("worker-a", 1.0) is not None
    assert queue.stats().oldest_waiting_s == 0.0  # delivered jobs do not wait


def test_the_same_request_id_returns_the_same_job(queue: JobQueue) -> None:
    first = queue.submit(spec("same"))
    again = queue.submit(spec("same"))  # a retry: new job id, same request
    assert again.job_id == first.job_id
    assert queue.stats().length == 1
    with pytest.raises(InvalidArgument) as refused:
        queue.submit(spec("same", digest="another request"))
    assert refused.value.field == "request_id"
    assert first.job_id in str(refused.value)


def test_jobs_without_request_id_are_never_merged(queue: JobQueue) -> None:
    assert queue.submit(spec()).job_id != queue.submit(spec()).job_id
    assert queue.stats().length == 2


def test_unknown_job_is_not_found(queue: JobQueue) -> None:
    with pytest.raises(JobNotFound) as missing:
        queue.status("nope")
    assert missing.value.field == "job_id"
    with pytest.raises(JobNotFound):
        queue.cancel("nope")


def test_claim_run_succeed(queue: JobQueue) -> None:
    job = spec("r")
    queue.submit(job)
    lease = queue.claim("worker-a", 1.0)
    assert lease is not None
    assert lease.spec == job  # inputs' bytes and all
    assert (lease.deliveries, lease.consumer) == (1, "worker-a")
    running = queue.status(job.job_id)
    assert running.state is JobState.RUNNING
    assert running.started_at is not None and running.deliveries == 1
    assert queue.stats().pending == 1 and queue.stats().lag == 0

    queue.progress(lease, 0.5, 64)
    halfway = queue.status(job.job_id)
    assert (halfway.fraction, halfway.evaluations) == (0.5, 64)

    result = explanation(job)
    assert queue.succeed(lease, result)
    done = queue.status(job.job_id)
    assert done.state is JobState.SUCCEEDED and done.finished_at is not None
    assert (done.fraction, done.evaluations, done.stopped_by) == (1.0, 130, "")
    assert done.result is not None
    np.testing.assert_array_equal(done.result.attributions, result.attributions)
    np.testing.assert_array_equal(done.result.outputs, result.outputs)
    assert done.result.quality == result.quality
    assert queue.stats().pending == 0
    assert queue.stats().jobs[JobState.SUCCEEDED] == 1
    assert queue.stats().jobs[JobState.RUNNING] == 0


def test_an_empty_queue_claims_nothing_after_the_wait(queue: JobQueue) -> None:
    started = time.monotonic()
    assert queue.claim("w", 0.3) is None
    assert 0.25 <= time.monotonic() - started < 3


def test_a_partial_result_is_stored_as_partial(queue: JobQueue) -> None:
    job = spec()
    queue.submit(job)
    lease = queue.claim("w", 1.0)
    assert lease is not None
    assert queue.succeed(lease, explanation(job, stopped_by="budget"))
    done = queue.status(job.job_id)
    assert done.state is JobState.SUCCEEDED and done.partial
    assert done.stopped_by == "budget" and done.fraction < 1.0


def test_a_dead_workers_job_is_taken_over_once_its_lease_expires(queue: JobQueue) -> None:
    job = spec()
    queue.submit(job)
    first = queue.claim("worker-a", 1.0)
    claimed = time.monotonic()
    assert first is not None
    assert queue.claim("worker-b", 0.05) is None  # the lease is fresh
    # worker-a "died": no renewal. worker-b gets the job once the lease has run out, not before.
    second = wait_until(lambda: queue.claim("worker-b", 0.05), LEASE * 10, "the takeover")
    assert time.monotonic() - claimed >= LEASE
    assert second.job_id == job.job_id
    assert second.deliveries == 2
    assert queue.renew(first) is Hold.LOST  # worker-a woke up: the job is not its own
    assert queue.succeed(second, explanation(job))
    assert not queue.succeed(first, explanation(job))  # a duplicate: the first result stands
    done = queue.status(job.job_id)
    assert done.state is JobState.SUCCEEDED and done.deliveries == 2
    assert queue.stats().pending == 0


def test_renewing_keeps_a_long_job_with_its_worker(queue: JobQueue) -> None:
    queue.submit(spec())
    lease = queue.claim("worker-a", 1.0)
    assert lease is not None
    until = time.monotonic() + LEASE * 3
    while time.monotonic() < until:
        assert queue.renew(lease) is Hold.HELD
        assert queue.claim("worker-b", LEASE / 4) is None


def test_a_job_whose_workers_keep_dying_is_dead_lettered(queue: JobQueue) -> None:
    job = spec()
    queue.submit(job)
    for delivery in (1, 2):  # max_deliveries = 2; each worker dies holding the job
        worker = f"w{delivery}"
        lease = wait_until(
            lambda worker=worker: queue.claim(worker, 0.05), LEASE * 10, f"delivery {delivery}"
        )
        assert lease.deliveries == delivery

    def dead_lettered() -> bool:
        assert queue.claim("w3", 0.05) is None  # the third delivery is never run
        return queue.status(job.job_id).state is JobState.FAILED

    wait_until(dead_lettered, LEASE * 10, "the dead letter")
    failed = queue.status(job.job_id)
    assert failed.state is JobState.FAILED
    assert "delivered 2 times" in failed.error and "w2" in failed.error
    letters = queue.dead_letters()
    assert [(d.job_id, d.deliveries) for d in letters] == [(job.job_id, 2)]
    assert letters[0].reason == failed.error
    stats = queue.stats()
    assert (stats.pending, stats.dead_letters, stats.jobs[JobState.FAILED]) == (0, 1, 1)


def test_cancelling_a_queued_job_ends_it_and_no_worker_runs_it(queue: JobQueue) -> None:
    job = spec()
    queue.submit(job)
    assert queue.cancel(job.job_id).state is JobState.CANCELLED
    assert queue.claim("w", 0.2) is None
    assert queue.stats().pending == 0
    assert queue.cancel(job.job_id).state is JobState.CANCELLED  # idempotent


def test_cancelling_a_running_job_reaches_its_worker(queue: JobQueue) -> None:
    job = spec()
    queue.submit(job)
    lease = queue.claim("w", 1.0)
    assert lease is not None
    assert queue.cancel(job.job_id).state is JobState.RUNNING  # until the worker stops
    assert queue.renew(lease) is Hold.CANCEL_REQUESTED
    queue.cancelled(lease, evaluations=12)
    done = queue.status(job.job_id)
    assert (done.state, done.evaluations, done.result) == (JobState.CANCELLED, 12, None)
    assert queue.stats().pending == 0


def test_a_job_past_its_deadline_before_any_start_expires(queue: JobQueue) -> None:
    job = spec(deadline=time.time() - 0.1)  # it passed while the job waited
    queue.submit(job)
    assert queue.claim("w", 0.2) is None
    expired = queue.status(job.job_id)
    assert expired.state is JobState.EXPIRED
    assert "deadline" in expired.error
    assert queue.stats().pending == 0


def test_a_released_job_is_run_again_without_counting_a_delivery(queue: JobQueue) -> None:
    job = spec()
    queue.submit(job)
    lease = queue.claim("stopping", 1.0)
    assert lease is not None
    queue.progress(lease, 0.3, 10)
    queue.release(lease)
    back = queue.status(job.job_id)
    assert (back.state, back.fraction) == (JobState.QUEUED, 0.0)
    again = queue.claim("other", 0.5)  # at once, not after the lease
    assert again is not None and again.job_id == job.job_id
    assert again.deliveries == 1


def test_a_failure_is_recorded_with_or_without_a_dead_letter(queue: JobQueue) -> None:
    bad, broken = spec(), spec()
    queue.submit(bad)
    queue.submit(broken)
    first = queue.claim("w", 1.0)
    second = queue.claim("w", 1.0)
    assert first is not None and second is not None
    queue.fail(first, "model 'm' has no version '9'", dead_letter=False)
    queue.fail(second, "RuntimeError: boom", dead_letter=True)
    assert queue.status(first.job_id).error == "model 'm' has no version '9'"
    assert queue.status(second.job_id).state is JobState.FAILED
    assert [d.job_id for d in queue.dead_letters()] == [second.job_id]


def test_finished_jobs_are_forgotten_after_their_retention(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    queue = make_queue(kind, server, retention_seconds=0.3)
    job = spec("kept-for-a-while")
    queue.submit(job)
    lease = queue.claim("w", 1.0)
    assert lease is not None
    queue.succeed(lease, explanation(job))
    assert queue.status(job.job_id).state is JobState.SUCCEEDED
    submitted = time.monotonic()

    def forgotten() -> bool:
        try:
            queue.status(job.job_id)
        except JobNotFound:
            return True
        return False

    wait_until(forgotten, 10, "the retention to pass")
    assert time.monotonic() - submitted >= 0.25  # kept for its retention (0.3 s), not less
    with pytest.raises(JobNotFound):
        queue.status(job.job_id)
    fresh = queue.submit(job)  # the request id is free again
    assert fresh.state is JobState.QUEUED
    queue.close()


def test_trimming_drops_only_acknowledged_entries(queue: JobQueue) -> None:
    jobs = [spec() for _ in range(10)]
    for job in jobs:
        queue.submit(job)
    leases = [queue.claim(f"w{i}", 1.0) for i in range(6)]
    assert all(lease is not None for lease in leases)
    # Finish leases 0, 1, 3, 4; 2 and 5 stay pending; 4 jobs are not delivered yet.
    for index in (0, 1, 3, 4):
        queue.succeed(leases[index], explanation(leases[index].spec))  # type: ignore[union-attr]
    queue.trim()
    stats = queue.stats()
    assert stats.pending == 2 and stats.lag == 4
    # Entries 0 and 1 are gone; from the oldest pending one (2) on, all are kept.
    assert stats.length == 8
    for index in (2, 5):
        assert queue.succeed(leases[index], explanation(leases[index].spec))  # type: ignore[union-attr]
    rest = [queue.claim("late", 1.0) for _ in range(4)]
    assert sorted(lease.job_id for lease in rest if lease) == sorted(j.job_id for j in jobs[6:])
    for lease in rest:
        assert lease is not None and queue.succeed(lease, explanation(lease.spec))
    queue.trim()
    assert queue.stats().length == 0
    assert queue.stats().jobs[JobState.SUCCEEDED] == 10


def test_a_full_queue_refuses_new_jobs_with_a_retry_delay(
    kind: str, request: pytest.FixtureRequest
) -> None:
    # Jobs waiting are capped by count, and the inputs of jobs not finished (they live in the
    # queue's memory, Redis's) by bytes: past either, Overloaded, with how long to wait.
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    queue = make_queue(kind, server, max_queued_jobs=2, max_queued_bytes=60)
    try:
        first, second = queue.submit(spec("a")), queue.submit(spec())  # 24 input bytes each
        with pytest.raises(Overloaded) as full:
            queue.submit(spec())
        assert full.value.retry_after_s > 0
        assert "2 jobs" in str(full.value)
        assert queue.submit(spec("a")).job_id == first.job_id  # a retry is no new job
        queue.cancel(first.job_id)
        third = queue.submit(spec())  # room again: 48 bytes of 60, 2 jobs waiting
        lease = queue.claim("w1", 1.0)
        assert lease is not None and lease.job_id == second.job_id
        with pytest.raises(Overloaded) as too_big:  # one waits, but 72 bytes > 60
            queue.submit(spec())
        assert "bytes" in str(too_big.value)
        queue.succeed(lease, explanation(lease.spec))
        assert queue.submit(spec()).state is JobState.QUEUED  # its inputs were let go
        assert queue.status(third.job_id).state is JobState.QUEUED
    finally:
        queue.close()
