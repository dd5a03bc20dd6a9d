"""The job queue's one interface, with two implementations behind it: Redis Streams
(`sidelight.jobs.redis_queue`, for production) and an in-process queue
(`sidelight.jobs.memory_queue`, the embedded default when no Redis URL is configured).
One contract test suite (tests/jobs/test_queue_contract.py) runs against both.

Delivery is at least once, results are effectively once:
- a job is acknowledged only after its result is stored, so a worker that dies mid-job leaves
  it pending; once its lease has been idle for `lease_seconds` another worker takes it over;
- a live worker renews its lease while it computes, so a long job is never taken from it;
- a job delivered more than `max_deliveries` times (its workers keep dying) goes to the dead
  letters with the reason and ends FAILED, instead of looping;
- storing a result is conditional on the job not being finished already: a second execution
  after a takeover finds the first result and only acknowledges.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

from sidelight.errors import Overloaded
from sidelight.explanations import Explanation
from sidelight.jobs import payload
from sidelight.jobs.spec import JobResult, JobSpec, JobState, JobStatus
from sidelight.settings import QueueSettings

# How long a caller refused by a full queue is told to wait: jobs take seconds to minutes.
QUEUE_FULL_RETRY_S = 10.0


def admission(settings: QueueSettings, waiting: int, held_bytes: int, size: int) -> None:
    """Overloaded when one more job of `size` input bytes does not fit (QueueSettings)."""
    if waiting >= settings.max_queued_jobs:
        raise Overloaded(
            f"{waiting} jobs are waiting (limit {settings.max_queued_jobs}); retry later",
            retry_after_s=QUEUE_FULL_RETRY_S,
        )
    if held_bytes + size > settings.max_queued_bytes:
        raise Overloaded(
            f"the jobs not finished hold {held_bytes} input bytes; {size} more would pass the "
            f"limit of {settings.max_queued_bytes} bytes; retry later",
            retry_after_s=QUEUE_FULL_RETRY_S,
        )


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one delivery of a job."""

    spec: JobSpec
    entry_id: str  # the queue's handle on this delivery (a stream entry id)
    consumer: str
    deliveries: int  # including this one

    @property
    def job_id(self) -> str:
        return self.spec.job_id


class Hold(Enum):
    """What renewing a lease found."""

    HELD = "held"
    CANCEL_REQUESTED = "cancel_requested"  # still held: stop and finish the job CANCELLED
    LOST = "lost"  # another worker took the job over: stop, store nothing


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    job_id: str
    reason: str
    deliveries: int


@dataclass(frozen=True)
class QueueStats:
    length: int  # entries in the stream (acknowledged ones until trimmed)
    lag: int  # entries not delivered to any worker yet
    pending: int  # delivered, not acknowledged (running, or of a dead worker)
    dead_letters: int
    # QUEUED and RUNNING: jobs in that state now; terminal states: jobs that ended so, ever.
    jobs: dict[JobState, int]
    # Seconds since the oldest entry not yet delivered to any worker was submitted (0.0 when
    # none waits): how long the front of the queue has waited, which lag alone does not say.
    oldest_waiting_s: float = 0.0


class JobQueue(ABC):
    """Submission and status for the API, claim and completion for the workers.

    Methods block (the API server calls them in a thread); a backend that cannot be reached
    raises `sidelight.errors.Unavailable`.
    """

    settings: QueueSettings

    # -- the API's side --------------------------------------------------------------------

    @abstractmethod
    def submit(self, spec: JobSpec) -> JobStatus:
        """Queue `spec`, or return the job already queued under its request_id.
        InvalidArgument("request_id") when that id was used for a different request;
        Overloaded when the queue is full (`admission`)."""

    @abstractmethod
    def status(self, job_id: str) -> JobStatus:
        """JobNotFound when no such job is known (never submitted, or past its retention)."""

    @abstractmethod
    def cancel(self, job_id: str) -> JobStatus:
        """A queued job ends CANCELLED now; a running one when its worker next renews."""

    @abstractmethod
    def healthy(self) -> bool:
        """Whether the backend answers (readiness)."""

    @abstractmethod
    def stats(self) -> QueueStats: ...

    @abstractmethod
    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The latest dead letters, newest last."""

    # -- the workers' side -----------------------------------------------------------------

    @abstractmethod
    def claim(self, consumer: str, wait_seconds: float) -> Lease | None:
        """The next job to run: one of a dead worker's whose lease expired, else a new one,
        waiting up to `wait_seconds`. Jobs cancelled, past their deadline or delivered too
        often are settled on the way (acknowledged, EXPIRED, dead-lettered) and skipped."""

    @abstractmethod
    def renew(self, lease: Lease) -> Hold:
        """Reset the lease's idle time, and say whether the job was cancelled or lost."""

    @abstractmethod
    def progress(self, lease: Lease, fraction: float, evaluations: int) -> None: ...

    def succeed(self, lease: Lease, result: JobResult) -> bool:
        """Store the result, mark SUCCEEDED, acknowledge. False when the job had already
        finished (a duplicate execution): the stored result stands."""
        if isinstance(result, Explanation):
            stopped_by, evaluations = result.quality.stopped_by, result.quality.model_evaluations
        else:
            stopped_by, evaluations = result.stopped_by, result.evaluations
        return self._end(
            lease,
            JobState.SUCCEEDED,
            stopped_by=stopped_by,
            evaluations=evaluations,
            result=payload.encode_result(result),
        )

    def fail(self, lease: Lease, reason: str, *, dead_letter: bool, evaluations: int = 0) -> None:
        """Mark FAILED with `reason` (and add a dead letter), acknowledge."""
        self._end(
            lease, JobState.FAILED, error=reason, dead_letter=dead_letter, evaluations=evaluations
        )

    def cancelled(self, lease: Lease, evaluations: int) -> None:
        """The worker stopped a job whose cancellation it saw: CANCELLED, acknowledged."""
        self._end(lease, JobState.CANCELLED, stopped_by="cancelled", evaluations=evaluations)

    @abstractmethod
    def _end(
        self,
        lease: Lease,
        state: JobState,
        *,
        error: str = "",
        stopped_by: str = "",
        evaluations: int = 0,
        dead_letter: bool = False,
        result: payload.Fields | None = None,
    ) -> bool:
        """Finish the job in `state` unless it is finished already, and acknowledge; whether
        this call finished it."""

    @abstractmethod
    def release(self, lease: Lease) -> None:
        """Hand the job back (a worker shutting down): QUEUED again, for the next claim,
        without counting this delivery against `max_deliveries`."""

    def trim(self) -> int:
        """Drop acknowledged entries from the stream; never a pending or undelivered one.
        How many were dropped."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional: only a networked queue has anything to close
        """Release connections."""
