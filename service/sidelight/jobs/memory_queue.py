"""The in-process job queue: the embedded default when no Redis URL is configured.

It keeps the Redis queue's semantics (a stream of entries, a pending list with delivery counts
and idle times, leases, dead letters, retention) in memory under one lock, so that the same
contract tests pass against both and a single-machine start behaves like production, except
that nothing survives the process.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from sidelight.errors import InvalidArgument, JobNotFound
from sidelight.jobs import payload
from sidelight.jobs.queue import DeadLetter, Hold, JobQueue, Lease, QueueStats, admission
from sidelight.jobs.spec import TERMINAL, JobSpec, JobState, JobStatus
from sidelight.settings import QueueSettings


@dataclass
class _Pending:
    consumer: str
    delivered_at: float  # time.monotonic()
    deliveries: int


@dataclass
class _Record:
    fields: dict[str, bytes]
    expires_at: float | None = None  # time.monotonic()
    result: dict[str, bytes] | None = None


@dataclass
class _State:
    entries: OrderedDict[int, tuple[str, str]] = field(default_factory=OrderedDict)
    submitted_at: dict[int, float] = field(default_factory=dict)  # entry -> time.monotonic()
    next_entry: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    last_delivered: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    jobs: dict[str, _Record] = field(default_factory=dict)
    requests: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    counts: dict[JobState, int] = field(default_factory=lambda: dict.fromkeys(JobState, 0))
    input_bytes: int = 0  # inputs of the jobs not finished


class MemoryJobQueue(JobQueue):
    def __init__(self, settings: QueueSettings | None = None) -> None:
        self.settings = settings or QueueSettings()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._s = _State()

    # -- helpers (lock held) ---------------------------------------------------------------

    def _record(self, job_id: str) -> _Record | None:
        record = self._s.jobs.get(job_id)
        if record is None or record.expires_at is None or time.monotonic() < record.expires_at:
            return record
        del self._s.jobs[job_id]
        return None

    def _state(self, record: _Record) -> JobState:
        return JobState(record.fields[payload.STATE].decode())

    def _finish(
        self,
        job_id: str,
        record: _Record,
        to: JobState,
        *,
        error: str = "",
        stopped_by: str = "",
    ) -> None:
        source = self._state(record)
        fields = record.fields
        fields[payload.STATE] = to.value.encode()
        fields[payload.FINISHED_AT] = repr(time.time()).encode()
        fields[payload.ERROR] = error.encode()
        fields[payload.STOPPED_BY] = stopped_by.encode()
        if to is JobState.SUCCEEDED and not stopped_by:
            fields[payload.FRACTION] = b"1"
        self._s.input_bytes -= len(fields.pop(payload.INPUTS, b""))
        fields.pop(payload.CANCEL_REQUESTED, None)
        self._s.counts[source] -= 1
        self._s.counts[to] += 1
        expires = time.monotonic() + self.settings.retention_seconds
        record.expires_at = expires
        request_id = payload.decode_spec(fields).request_id
        if request_id and request_id in self._s.requests:
            self._s.requests[request_id] = (job_id, expires)

    def _ack(self, entry: int) -> None:
        self._s.pending.pop(entry, None)

    def _status(self, job_id: str) -> JobStatus:
        record = self._record(job_id)
        if record is None:
            raise JobNotFound("job_id", f"no job {job_id!r} (never submitted, or past retention)")
        result = record.result if self._state(record) is JobState.SUCCEEDED else None
        return payload.decode_status(dict(record.fields), result)

    def _held(self, lease: Lease) -> bool:
        pending = self._s.pending.get(int(lease.entry_id))
        return pending is not None and pending.consumer == lease.consumer

    # -- the API's side --------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobStatus:
        with self._lock:
            if spec.request_id:
                known = self._s.requests.get(spec.request_id)
                if known is not None and (known[1] is None or time.monotonic() < known[1]):
                    job_id = known[0]
                    record = self._record(job_id)
                    if record is not None:
                        if payload.decode_spec(record.fields).digest != spec.digest:
                            raise InvalidArgument(
                                "request_id",
                                f"{spec.request_id!r} was already used for a different request "
                                f"(job {job_id})",
                            )
                        return self._status(job_id)
            size = len(spec.inputs.data)
            admission(self.settings, self._s.counts[JobState.QUEUED], self._s.input_bytes, size)
            self._s.input_bytes += size
            self._s.jobs[spec.job_id] = _Record(payload.new_record(spec))
            entry = next(self._s.next_entry)
            self._s.entries[entry] = (spec.job_id, spec.request_id)
            self._s.submitted_at[entry] = time.monotonic()
            if spec.request_id:
                self._s.requests[spec.request_id] = (spec.job_id, None)
            self._s.counts[JobState.QUEUED] += 1
            self._arrived.notify()
            return self._status(spec.job_id)

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._status(job_id)

    def cancel(self, job_id: str) -> JobStatus:
        with self._lock:
            record = self._record(job_id)
            if record is None:
                raise JobNotFound(
                    "job_id", f"no job {job_id!r} (never submitted, or past retention)"
                )
            state = self._state(record)
            if state is JobState.QUEUED:
                self._finish(job_id, record, JobState.CANCELLED, stopped_by="cancelled")
            elif state is JobState.RUNNING:
                record.fields[payload.CANCEL_REQUESTED] = b"1"
            return self._status(job_id)

    def healthy(self) -> bool:
        return True

    def stats(self) -> QueueStats:
        with self._lock:
            waiting = [entry for entry in self._s.entries if entry > self._s.last_delivered]
            oldest = self._s.submitted_at[waiting[0]] if waiting else None
            return QueueStats(
                length=len(self._s.entries),
                lag=len(waiting),
                pending=len(self._s.pending),
                dead_letters=len(self._s.dead),
                jobs=dict(self._s.counts),
                oldest_waiting_s=0.0 if oldest is None else time.monotonic() - oldest,
            )

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(self._s.dead[-count:])

    # -- the workers' side -----------------------------------------------------------------

    def claim(self, consumer: str, wait_seconds: float) -> Lease | None:
        give_up = time.monotonic() + wait_seconds
        with self._lock:
            while True:
                entry = self._next_entry(consumer)
                if entry is None:
                    left = give_up - time.monotonic()
                    if left <= 0:
                        return None
                    self._arrived.wait(min(left, self.settings.lease_seconds))
                    continue
                lease = self._start_entry(consumer, entry)
                if lease is not None:
                    return lease

    def _next_entry(self, consumer: str) -> int | None:
        now = time.monotonic()
        for entry, pending in self._s.pending.items():  # a dead worker's, lease expired
            if now - pending.delivered_at >= self.settings.lease_seconds:
                pending.consumer, pending.delivered_at = consumer, now
                pending.deliveries += 1
                return entry
        for entry in self._s.entries:  # a new one
            if entry > self._s.last_delivered:
                self._s.last_delivered = entry
                self._s.pending[entry] = _Pending(consumer, now, 1)
                return entry
        return None

    def _start_entry(self, consumer: str, entry: int) -> Lease | None:
        job_id, _request = self._s.entries[entry]
        deliveries = self._s.pending[entry].deliveries
        record = self._record(job_id)
        if record is None or self._state(record) in TERMINAL:
            self._ack(entry)
            return None
        state = self._state(record)
        if record.fields.get(payload.CANCEL_REQUESTED) == b"1":
            self._finish(job_id, record, JobState.CANCELLED, stopped_by="cancelled")
            self._ack(entry)
            return None
        if deliveries > self.settings.max_deliveries:
            last = record.fields.get(payload.CONSUMER, b"").decode()
            reason = (
                f"dead-lettered: delivered {deliveries - 1} times and never finished "
                f"(its worker stopped each time; last: {last})"
            )
            self._dead_letter(entry, job_id, reason, deliveries - 1)
            self._finish(job_id, record, JobState.FAILED, error=reason)
            self._ack(entry)
            return None
        spec = payload.decode_spec(record.fields)
        if spec.deadline is not None and spec.deadline <= time.time():
            self._finish(
                job_id,
                record,
                JobState.EXPIRED,
                error="the deadline passed before a worker could start it",
            )
            self._ack(entry)
            return None
        if state is JobState.QUEUED:
            self._s.counts[JobState.QUEUED] -= 1
            self._s.counts[JobState.RUNNING] += 1
            record.fields[payload.STARTED_AT] = repr(time.time()).encode()
        record.fields[payload.STATE] = JobState.RUNNING.value.encode()
        record.fields[payload.CONSUMER] = consumer.encode()
        record.fields[payload.DELIVERIES] = str(deliveries).encode()
        return Lease(spec, str(entry), consumer, deliveries)

    def _dead_letter(self, entry: int, job_id: str, reason: str, deliveries: int) -> None:
        self._s.dead.append(DeadLetter(str(entry), job_id, reason, deliveries))
        del self._s.dead[: -self.settings.max_dead_letters]

    def renew(self, lease: Lease) -> Hold:
        with self._lock:
            if not self._held(lease):
                return Hold.LOST
            self._s.pending[int(lease.entry_id)].delivered_at = time.monotonic()
            record = self._record(lease.job_id)
            if record is not None and record.fields.get(payload.CANCEL_REQUESTED) == b"1":
                return Hold.CANCEL_REQUESTED
            return Hold.HELD

    def progress(self, lease: Lease, fraction: float, evaluations: int) -> None:
        with self._lock:
            record = self._record(lease.job_id)
            if not self._held(lease) or record is None:
                return
            if self._state(record) is JobState.RUNNING:
                record.fields[payload.FRACTION] = f"{fraction:.6f}".encode()
                record.fields[payload.EVALUATIONS] = str(evaluations).encode()

    def _end(
        self,
        lease: Lease,
        to: JobState,
        *,
        error: str = "",
        stopped_by: str = "",
        evaluations: int = 0,
        dead_letter: bool = False,
        result: payload.Fields | None = None,
    ) -> bool:
        with self._lock:
            entry = int(lease.entry_id)
            record = self._record(lease.job_id)
            if record is None or self._state(record) in TERMINAL:
                self._ack(entry)
                return False
            if result is not None:
                record.result = dict(result)
            if dead_letter:
                deliveries = int(record.fields.get(payload.DELIVERIES, b"0"))
                self._dead_letter(entry, lease.job_id, error, deliveries)
            record.fields[payload.EVALUATIONS] = str(evaluations).encode()
            self._finish(lease.job_id, record, to, error=error, stopped_by=stopped_by)
            self._ack(entry)
            return True

    def release(self, lease: Lease) -> None:
        with self._lock:
            if not self._held(lease):
                return
            pending = self._s.pending[int(lease.entry_id)]
            pending.delivered_at = time.monotonic() - 10 * self.settings.lease_seconds
            pending.deliveries = lease.deliveries - 1
            record = self._record(lease.job_id)
            if record is not None and self._state(record) is JobState.RUNNING:
                record.fields[payload.STATE] = JobState.QUEUED.value.encode()
                record.fields[payload.FRACTION] = b"0"
                record.fields[payload.EVALUATIONS] = b"0"
                self._s.counts[JobState.RUNNING] -= 1
                self._s.counts[JobState.QUEUED] += 1
            self._arrived.notify()

    def trim(self) -> int:
        with self._lock:
            floor = min(self._s.pending, default=self._s.last_delivered + 1)
            floor = min(floor, self._s.last_delivered + 1)
            dropped = [entry for entry in self._s.entries if entry < floor]
            for entry in dropped:
                del self._s.entries[entry]
                del self._s.submitted_at[entry]
            return len(dropped)
