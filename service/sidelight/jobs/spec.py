"""What a job is: its request as queued (JobSpec), and its state as a client sees it (JobStatus).

Both are plain data: the queues store them through `sidelight.jobs.payload` (JSON and raw
tensor bytes, never pickle), the data plane turns them into replies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sidelight.explanations import Explanation
from sidelight.quality.sanity import SanityOutcome
from sidelight.tensors import RawTensor

# What a worker hands back: an explanation, or a sanity check's outcome.
JobResult = Explanation | SanityOutcome


class JobKind(StrEnum):
    EXPLAIN = "explain"  # an explain request (`method`, its `params`)
    # Model-parameter randomization of several methods (`sidelight sanity` as a job);
    # params: methods, mode, seed.
    SANITY = "sanity"


class JobState(StrEnum):
    QUEUED = "QUEUED"  # accepted, waiting for a worker
    RUNNING = "RUNNING"  # a worker holds its lease
    SUCCEEDED = "SUCCEEDED"  # the result is stored (possibly partial: see JobStatus.stopped_by)
    FAILED = "FAILED"  # an error, or too many deliveries (dead-lettered)
    CANCELLED = "CANCELLED"  # by CancelJob
    EXPIRED = "EXPIRED"  # its deadline passed before any worker started it


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})


class StopReason(StrEnum):
    """Why a running job stopped before its planned end."""

    DEADLINE = "deadline"  # partial result
    BUDGET = "budget"  # partial result
    CANCELLED = "cancelled"  # no result
    LOST = "lost"  # another worker holds the lease now: this one stops, stores nothing


@dataclass(frozen=True)
class JobSpec:
    """A validated explain request, as queued. `model_version` and the seed (in `params`) are
    resolved at submission, so every delivery of the job computes the same thing."""

    job_id: str
    request_id: str
    model: str
    model_version: str
    method: str
    inputs: RawTensor
    targets: Sequence[int] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # wall-clock (time.time()) after which the job stops
    max_evaluations: int | None = None  # model evaluations the job may spend, all instances
    submitted_at: float = 0.0
    # SHA-256 of what the client sent: a request_id reused for a different request is refused.
    digest: str = ""
    # Faithfulness figures to compute for the result (sidelight.quality.evaluate.METRICS).
    evaluate: Sequence[str] = ()
    kind: JobKind = JobKind.EXPLAIN
    # For the result's audit record: who asked, about whom.
    subject_id: str = ""
    caller: str = ""


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: JobState
    request_id: str
    model: str
    model_version: str
    method: str
    fraction: float = 0.0  # of the planned model evaluations
    evaluations: int = 0
    error: str = ""
    stopped_by: str = ""  # StopReason value when the result is partial
    deliveries: int = 0
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: Explanation | None = None  # an explain job's, when SUCCEEDED
    sanity_report: dict[str, Any] | None = None  # a sanity job's (SanityOutcome.to_json)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def partial(self) -> bool:
        return self.stopped_by in (StopReason.DEADLINE, StopReason.BUDGET)
