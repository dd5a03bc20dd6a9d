"""A worker: claims jobs from the queue, runs them, stores their results, one job at a time.

While a job runs, a heartbeat thread renews its lease every third of `lease_seconds`; the
renewal also brings news of a cancellation (the job stops at its next model call and ends
CANCELLED) or of a takeover (another worker holds the job now: this one stops and stores
nothing). On shutdown the worker stops claiming; the job in hand gets `grace_seconds` to
finish, after which it is handed back to the queue for another worker. A job past its deadline
or budget stores its partial result; a method that has none (gradients, CAM) ends FAILED,
saying where it stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sidelight.audit.log import AuditLog
from sidelight.errors import AuditRecordConflict, InvalidArgument, NotFound, Unavailable
from sidelight.explanations import Explanation
from sidelight.jobs.queue import Hold, JobQueue, Lease
from sidelight.jobs.runner import JobRunner
from sidelight.jobs.spec import JobResult, StopReason
from sidelight.methods.checked import Stopped
from sidelight.metrics import JobMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

SHUTDOWN = "shutdown"
# Between two progress writes to the queue: a job reports often, the queue need not hear it.
PROGRESS_INTERVAL_S = 0.25
# How often a worker drops acknowledged entries from the stream.
TRIM_INTERVAL_S = 30.0


@dataclass(frozen=True)
class JobOutcome:
    """What a worker did with one delivery (for metrics and tests)."""

    job_id: str
    model: str
    method: str
    outcome: str  # succeeded, duplicate, partial, failed, dead_lettered, cancelled, lost, released
    seconds: float
    evaluations: int


class LeaseControl:
    """The Control a job's method consults between model calls."""

    def __init__(
        self, queue: JobQueue, lease: Lease, shutdown: threading.Event, grace_seconds: float
    ) -> None:
        self._queue = queue
        self._lease = lease
        self._shutdown = shutdown
        self._grace = grace_seconds
        self._shutdown_seen: float | None = None
        self.cancelled = False
        self.lost = False
        self.evaluations = 0
        self._last_report = 0.0

    def stop_reason(self, evaluations: int, next_rows: int) -> str | None:
        spec = self._lease.spec
        if self.lost:
            return StopReason.LOST.value
        if self.cancelled:
            return StopReason.CANCELLED.value
        if self._shutdown.is_set():
            now = time.monotonic()
            self._shutdown_seen = self._shutdown_seen or now
            if now - self._shutdown_seen >= self._grace:
                return SHUTDOWN
        if spec.deadline is not None and time.time() >= spec.deadline:
            return StopReason.DEADLINE.value
        if spec.max_evaluations is not None and evaluations + next_rows > spec.max_evaluations:
            return StopReason.BUDGET.value
        return None

    def progress(self, fraction: float, evaluations: int) -> None:
        self.evaluations = evaluations
        now = time.monotonic()
        if now - self._last_report < PROGRESS_INTERVAL_S and fraction < 1.0:
            return
        self._last_report = now
        try:
            self._queue.progress(self._lease, fraction, evaluations)
        except Unavailable as exc:  # progress is news, not state: the job goes on
            log.warning("job %s: progress not stored: %s", self._lease.job_id, exc)

    def heard(self, hold: Hold) -> None:
        if hold is Hold.CANCEL_REQUESTED:
            self.cancelled = True
        elif hold is Hold.LOST:
            self.lost = True


def observe_outcomes(metrics: JobMetrics) -> Callable[[JobOutcome], None]:
    def observe(outcome: JobOutcome) -> None:
        labels = (outcome.model, outcome.method)
        metrics.duration.labels(*labels, outcome.outcome).observe(outcome.seconds)
        metrics.evaluations.labels(*labels).observe(outcome.evaluations)
        metrics.outcomes.labels(*labels, outcome.outcome).inc()

    return observe


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        runner: JobRunner,
        consumer: str,
        *,
        grace_seconds: float = 20.0,
        claim_wait_seconds: float = 1.0,
        on_outcome: Callable[[JobOutcome], None] = lambda outcome: None,
        audit: AuditLog | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.consumer = consumer
        self.grace_seconds = grace_seconds
        self.claim_wait_seconds = claim_wait_seconds
        self.on_outcome = on_outcome
        self.audit = audit
        self.shutdown = threading.Event()

    def run(self) -> None:
        """Claim and run jobs until `shutdown` is set. Survives the queue going away."""
        backoff = 0.1
        last_trim = time.monotonic()
        while not self.shutdown.is_set():
            try:
                lease = self.queue.claim(self.consumer, self.claim_wait_seconds)
                if time.monotonic() - last_trim >= TRIM_INTERVAL_S:
                    self.queue.trim()
                    last_trim = time.monotonic()
            except Unavailable as exc:
                log.warning("queue unreachable, retrying in %.1fs: %s", backoff, exc)
                self.shutdown.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if lease is not None:
                self.process(lease)

    def process(self, lease: Lease) -> JobOutcome:
        control = LeaseControl(self.queue, lease, self.shutdown, self.grace_seconds)
        done = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat, args=(lease, control, done), daemon=True, name="lease"
        )
        heartbeat.start()
        started = time.perf_counter()
        try:
            outcome = self._execute(lease, control)
        finally:
            done.set()
            heartbeat.join()
        result = JobOutcome(
            lease.job_id,
            lease.spec.model,
            lease.spec.method,
            outcome,
            time.perf_counter() - started,
            control.evaluations,
        )
        log.info("job %s: %s in %.2fs", lease.job_id, outcome, result.seconds)
        self.on_outcome(result)
        return result

    def _execute(self, lease: Lease, control: LeaseControl) -> str:
        try:
            result = self.runner.run(lease.spec, control)
        except Stopped as stop:
            ending = self._stopped(lease, control, stop.reason, stop.evaluations)
            if ending is not None:
                return ending
            spent = stop.evaluations
            problem = (
                f"stopped by its {stop.reason} after {spent} model evaluations: "
                f"{lease.spec.method} has no estimate from part of its passes (only the "
                "perturbation methods return a partial result)"
            )
            return self._settle(
                lambda: self.queue.fail(lease, problem, dead_letter=False, evaluations=spent),
                "failed",
            )
        except (InvalidArgument, NotFound) as exc:
            # The request cannot run here (a model or version this worker does not have, a
            # spec that no longer validates): no other delivery would do better.
            problem = str(exc)
            return self._settle(
                lambda: self.queue.fail(lease, problem, dead_letter=False), "failed"
            )
        except Exception as exc:
            log.exception("job %s failed", lease.job_id)
            reason = f"{type(exc).__name__}: {exc}"
            return self._settle(
                lambda: self.queue.fail(lease, reason, dead_letter=True), "dead_lettered"
            )
        return self._store(lease, control, result)

    def _store(self, lease: Lease, control: LeaseControl, result: JobResult) -> str:
        stopped = (
            result.quality.stopped_by if isinstance(result, Explanation) else result.stopped_by
        )
        evaluations = control.evaluations
        if isinstance(result, Explanation):
            evaluations = result.quality.model_evaluations
        ending = self._stopped(lease, control, stopped, evaluations)
        if ending is not None:
            return ending
        # Recorded before it is stored (what a client can read is recorded); while the audit
        # store is down (strict mode) the job waits here, pending, like a result the queue
        # cannot take yet.
        explained = result if isinstance(result, Explanation) else None
        if explained and self.audit and self._write(lambda: self._record(lease, explained)) is None:
            return "lost"
        stored = self._write(lambda: self.queue.succeed(lease, result))
        if stored is None:
            return "lost"
        if not stored:
            return "duplicate"
        return "partial" if stopped else "succeeded"

    def _stopped(
        self, lease: Lease, control: LeaseControl, reason: str, evaluations: int
    ) -> str | None:
        """How a job ends that was lost, shut down or cancelled (it keeps no result); None
        when it stopped for none of these (a partial result, or none at all)."""
        if control.lost or reason == StopReason.LOST:
            return "lost"
        if reason == SHUTDOWN:
            return self._settle(lambda: self.queue.release(lease), "released")
        if control.cancelled or reason == StopReason.CANCELLED:
            return self._settle(lambda: self.queue.cancelled(lease, evaluations), "cancelled")
        return None

    def _record(self, lease: Lease, explanation: Explanation) -> bool:
        assert self.audit is not None
        spec = lease.spec
        record = self.audit.explanation(
            explanation,
            self.runner.model(spec.model, spec.model_version),
            spec.inputs,
            spec.params,
            caller=spec.caller,
            subject_id=spec.subject_id,
        )
        try:
            self.audit.write_blocking(record)
        except AuditRecordConflict:
            # An earlier delivery recorded this job (its record_id is the job id) and died
            # before storing the result: that record stands, this result equals it (same
            # seed, same bits).
            log.info("job %s: already in the audit log", lease.job_id)
        return True

    def _settle(self, write: Callable[[], object], outcome: str) -> str:
        """`outcome` once `write` lands; "lost" if it never does (see `_write`). The queue's
        fail, cancelled and release answer None, which `_write` would read as never landed."""

        def landed() -> bool:
            write()
            return True

        return "lost" if self._write(landed) is None else outcome

    def _write(self, write: Callable[[], T]) -> T | None:
        """Write the job's end to the queue, retrying while it is unreachable: the result is
        in hand, and the job stays pending (safe) until the write lands. Gives up (None) after
        the grace period once shutting down; another worker will then run the job again."""
        backoff = 0.1
        shutdown_seen: float | None = None
        while True:
            try:
                return write()
            except Unavailable as exc:
                if self.shutdown.is_set():
                    shutdown_seen = shutdown_seen or time.monotonic()
                    if time.monotonic() - shutdown_seen >= self.grace_seconds:
                        log.error("giving the job up to the queue's redelivery: %s", exc)
                        return None
                log.warning("queue unreachable, retrying in %.1fs: %s", backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _heartbeat(self, lease: Lease, control: LeaseControl, done: threading.Event) -> None:
        period = self.queue.settings.lease_seconds / 3
        while not done.wait(period):
            try:
                control.heard(self.queue.renew(lease))
            except Unavailable as exc:
                log.warning("job %s: lease not renewed: %s", lease.job_id, exc)
