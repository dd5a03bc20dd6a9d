"""The job queue on Redis Streams: one stream, one consumer group, Lua for each state change.

Keys (under the configured prefix, "sidelight" by default):
    {p}:jobs                 stream; an entry per submission: job id and request key
    {p}:dead                 stream of dead letters: job id, reason, deliveries
    {p}:job:{id}             hash: the spec, the inputs, state, progress, error, ...
    {p}:result:{id}          hash: the explanation (JSON header + raw tensors)
    {p}:request:{request_id} the job id submitted under this request id (idempotency)
    {p}:counts               hash: jobs per state, and `input_bytes`: the inputs held by the
                             jobs not finished (for the queue's cap, QueueSettings)

Each transition is one Lua script, so it is atomic and lands in the append-only file as a
whole: a job is never queued without its record, never finished without its result, and a
crash between "store the result" and "acknowledge" cannot happen. Needs Redis >= 6.2
(XAUTOCLAIM); on 7.0 and later XAUTOCLAIM also reports entries lost to trimming. Run Redis
with `maxmemory-policy noeviction` and the append-only file on (docs/jobs.md).

Hand-written on redis-py rather than taken from a task library: RQ and arq default to pickle
and re-run nothing after a `kill -9` (RQ) or have no dead letters (arq); Celery's Redis
transport redelivers long jobs in a loop past its visibility timeout. The guarantees asked here
(lease renewal, dead letters by delivery count, trimming that spares pending jobs) are a few
stream commands each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidelight.errors import InvalidArgument, JobNotFound, Unavailable
from sidelight.jobs import payload
from sidelight.jobs.queue import DeadLetter, Hold, JobQueue, Lease, QueueStats, admission
from sidelight.jobs.spec import JobSpec, JobState, JobStatus
from sidelight.settings import QueueSettings

log = logging.getLogger(__name__)

GROUP = "workers"
T = TypeVar("T")

# Shared by the scripts: end a job in `to` (from whatever live state it was in).
_FINISH = """
local function finish(job, counts, request, from, to, now, retention, err, stopped)
  redis.call('HSET', job, 'state', to, 'finished_at', now, 'error', err, 'stopped_by', stopped)
  if to == 'SUCCEEDED' and stopped == '' then redis.call('HSET', job, 'fraction', '1') end
  local held = redis.call('HSTRLEN', job, 'inputs')
  redis.call('HDEL', job, 'inputs', 'cancel_requested')
  if held > 0 then redis.call('HINCRBY', counts, 'input_bytes', -held) end
  redis.call('HINCRBY', counts, from, -1)
  redis.call('HINCRBY', counts, to, 1)
  redis.call('PEXPIRE', job, retention)
  if request ~= '' then redis.call('PEXPIRE', request, retention) end
end
local terminal = {SUCCEEDED=true, FAILED=true, CANCELLED=true, EXPIRED=true}
"""

# KEYS: request, job, stream, counts. ARGV: job id, request key, input bytes, max queued jobs,
# max input bytes, field/value pairs... A full queue answers {-1, queued, input bytes held}.
_SUBMIT = """
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing} end
end
local queued = tonumber(redis.call('HGET', KEYS[4], 'QUEUED') or '0')
local held = tonumber(redis.call('HGET', KEYS[4], 'input_bytes') or '0')
if queued >= tonumber(ARGV[4]) or held + tonumber(ARGV[3]) > tonumber(ARGV[5]) then
  return {-1, queued, held}
end
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('HINCRBY', KEYS[4], 'input_bytes', redis.call('HSTRLEN', KEYS[2], 'inputs'))
redis.call('XADD', KEYS[3], '*', 'job', ARGV[1], 'request', ARGV[2])
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
return {1, ARGV[1]}
"""

# A delivered entry: start it, or settle it. KEYS: job, counts, stream, dead, request.
# ARGV: group, entry id, consumer, now, deliveries, max deliveries, retention ms, job id.
_START = (
    _FINISH
    + """
local job, counts, stream, dead, request = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, entry, consumer, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local deliveries, retention = tonumber(ARGV[5]), ARGV[7]
local state = redis.call('HGET', job, 'state')
if not state then
  redis.call('XACK', stream, group, entry)
  return {'MISSING', ''}
end
if terminal[state] then
  redis.call('XACK', stream, group, entry)
  return {state, ''}
end
if redis.call('HGET', job, 'cancel_requested') == '1' then
  finish(job, counts, request, state, 'CANCELLED', now, retention, '', 'cancelled')
  redis.call('XACK', stream, group, entry)
  return {'CANCELLED', ''}
end
if deliveries > tonumber(ARGV[6]) then
  local last = redis.call('HGET', job, 'consumer') or ''
  local reason = 'dead-lettered: delivered ' .. (deliveries - 1) ..
    ' times and never finished (its worker stopped each time; last: ' .. last .. ')'
  redis.call('XADD', dead, '*', 'job', ARGV[8], 'reason', reason,
             'deliveries', deliveries - 1, 'at', now)
  finish(job, counts, request, state, 'FAILED', now, retention, reason, '')
  redis.call('XACK', stream, group, entry)
  return {'DEAD', reason}
end
local spec = cjson.decode(redis.call('HGET', job, 'spec'))
if spec['deadline'] ~= cjson.null and tonumber(spec['deadline']) <= tonumber(now) then
  finish(job, counts, request, state, 'EXPIRED', now, retention,
         'the deadline passed before a worker could start it', '')
  redis.call('XACK', stream, group, entry)
  return {'EXPIRED', ''}
end
if state == 'QUEUED' then
  redis.call('HINCRBY', counts, 'QUEUED', -1)
  redis.call('HINCRBY', counts, 'RUNNING', 1)
  redis.call('HSET', job, 'started_at', now)
end
redis.call('HSET', job, 'state', 'RUNNING', 'consumer', consumer, 'deliveries', deliveries)
return {'RUNNING', ''}
"""
)

# KEYS: job, result, counts, stream, request, dead.
# ARGV: group, entry, to, now, retention ms, error, stopped_by, evaluations, dead-letter flag,
# job id, then the result's field/value pairs.
_FINISH_JOB = (
    _FINISH
    + """
local job, result, counts, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local request, dead = KEYS[5], KEYS[6]
local group, entry, to, now, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HGET', job, 'state')
if (not state) or terminal[state] then
  redis.call('XACK', stream, group, entry)
  return 0
end
if #ARGV > 10 then
  redis.call('DEL', result)
  redis.call('HSET', result, unpack(ARGV, 11))
  redis.call('PEXPIRE', result, retention)
end
if ARGV[9] == '1' then
  redis.call('XADD', dead, '*', 'job', ARGV[10], 'reason', ARGV[6],
             'deliveries', redis.call('HGET', job, 'deliveries'), 'at', now)
end
redis.call('HSET', job, 'evaluations', ARGV[8])
finish(job, counts, request, state, to, now, retention, ARGV[6], ARGV[7])
redis.call('XACK', stream, group, entry)
return 1
"""
)

# KEYS: job, counts, request. ARGV: now, retention ms.
_CANCEL = (
    _FINISH
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'QUEUED' then
  finish(KEYS[1], KEYS[2], KEYS[3], state, 'CANCELLED', ARGV[1], ARGV[2], '', 'cancelled')
elseif state == 'RUNNING' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return state
"""
)

# KEYS: stream, job. ARGV: group, entry, consumer. -1 lost, 1 cancel requested, 0 held.
_RENEW = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return -1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 1 end
return 0
"""

# KEYS: stream, job. ARGV: group, entry, consumer, fraction, evaluations.
_PROGRESS = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'RUNNING' then return 0 end
redis.call('HSET', KEYS[2], 'fraction', ARGV[4], 'evaluations', ARGV[5])
return 1
"""

# KEYS: stream, job, counts. ARGV: group, entry, consumer, idle ms, deliveries before this one.
# The entry stays pending but looks long idle, so the next claim takes it at once; its
# delivery count is set back so that a shutdown is not counted as a failed delivery.
_RELEASE = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2],
           'IDLE', ARGV[4], 'RETRYCOUNT', ARGV[5], 'JUSTID')
if redis.call('HGET', KEYS[2], 'state') == 'RUNNING' then
  redis.call('HSET', KEYS[2], 'state', 'QUEUED', 'fraction', '0', 'evaluations', '0')
  redis.call('HINCRBY', KEYS[3], 'RUNNING', -1)
  redis.call('HINCRBY', KEYS[3], 'QUEUED', 1)
end
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobQueue(JobQueue):
    def __init__(
        self,
        url: str,
        settings: QueueSettings | None = None,
        *,
        connect_timeout: float = 1.0,
        command_timeout: float = 5.0,
    ) -> None:
        self.settings = settings or QueueSettings()
        self._url = url
        # No retries inside redis-py: an unreachable Redis must turn into UNAVAILABLE within
        # about a second, not hang a submit past its deadline. The next call reconnects.
        # Any: redis-py types replies as unions over decode_responses and RESP versions.
        self._client: Any = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            retry_on_timeout=False,
            health_check_interval=30,
        )
        self._command_timeout = command_timeout
        p = self.settings.prefix
        self._stream, self._dead, self._counts = f"{p}:jobs", f"{p}:dead", f"{p}:counts"
        self._submit = self._client.register_script(_SUBMIT)
        self._start = self._client.register_script(_START)
        self._finish = self._client.register_script(_FINISH_JOB)
        self._cancel = self._client.register_script(_CANCEL)
        self._renew = self._client.register_script(_RENEW)
        self._progress = self._client.register_script(_PROGRESS)
        self._release = self._client.register_script(_RELEASE)
        self._group_ready = False
        self._autoclaim_cursor = "0-0"
        self._read_own_pending: set[str] = set()

    # -- keys ------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.settings.prefix}:job:{job_id}"

    def _result(self, job_id: str) -> str:
        return f"{self.settings.prefix}:result:{job_id}"

    def _request(self, request_id: str) -> str:
        return f"{self.settings.prefix}:request:{request_id}" if request_id else ""

    @property
    def _retention_ms(self) -> int:
        return int(self.settings.retention_seconds * 1000)

    def _call(self, what: Callable[[], T]) -> T:
        try:
            return what()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise Unavailable(
                f"the job queue (Redis at {self._safe_url}) is unreachable: {exc}",
                public="the job queue is unreachable: retry later",
            ) from exc

    @property
    def _safe_url(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- the API's side --------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobStatus:
        def run() -> JobStatus:
            self._ensure_group()
            request = self._request(spec.request_id)
            fields = payload.new_record(spec)
            flat: list[Any] = []
            for name, value in fields.items():
                flat += [name, value]
            size = len(spec.inputs.data)
            limits = self.settings.max_queued_jobs, self.settings.max_queued_bytes
            created, job_id, *held = self._submit(
                keys=[request, self._job(spec.job_id), self._stream, self._counts],
                args=[spec.job_id, request, size, *limits, *flat],
            )
            if created == -1:
                admission(self.settings, int(job_id), int(held[0]), size)
                raise AssertionError("unreachable: the script and `admission` agree")
            job_id = _text(job_id)
            if not created:
                self._check_same_request(job_id, spec)
            return self._status(job_id)

        return self._call(run)

    def _check_same_request(self, job_id: str, spec: JobSpec) -> None:
        raw = self._client.hget(self._job(job_id), payload.SPEC)
        if raw is not None and payload.decode_spec({payload.SPEC: raw}).digest != spec.digest:
            raise InvalidArgument(
                "request_id",
                f"{spec.request_id!r} was already used for a different request (job {job_id})",
            )

    def status(self, job_id: str) -> JobStatus:
        return self._call(lambda: self._status(job_id))

    def _status(self, job_id: str) -> JobStatus:
        fields = self._client.hgetall(self._job(job_id))
        if not fields:
            raise JobNotFound("job_id", f"no job {job_id!r} (never submitted, or past retention)")
        decoded = {_text(k): v for k, v in fields.items()}
        result = None
        if decoded.get(payload.STATE) == JobState.SUCCEEDED.value.encode():
            stored = self._client.hgetall(self._result(job_id))
            result = {_text(k): v for k, v in stored.items()} or None
        return payload.decode_status(decoded, result)

    def cancel(self, job_id: str) -> JobStatus:
        def run() -> JobStatus:
            spec_field = self._client.hget(self._job(job_id), payload.SPEC)
            if spec_field is None:
                raise JobNotFound(
                    "job_id", f"no job {job_id!r} (never submitted, or past retention)"
                )
            request_id = payload.decode_spec({payload.SPEC: spec_field}).request_id
            self._cancel(
                keys=[self._job(job_id), self._counts, self._request(request_id)],
                args=[time.time(), self._retention_ms],
            )
            return self._status(job_id)

        return self._call(run)

    def healthy(self) -> bool:
        try:
            return bool(self._client.ping())
        except (RedisConnectionError, RedisTimeoutError):
            return False

    def stats(self) -> QueueStats:
        def run() -> QueueStats:
            self._ensure_group()
            pipe = self._client.pipeline(transaction=False)
            pipe.xlen(self._stream)
            pipe.xinfo_groups(self._stream)
            pipe.xlen(self._dead)
            pipe.hgetall(self._counts)
            pipe.time()
            length, groups, dead, counts, (seconds, micros) = pipe.execute()
            group = next((g for g in groups if _text(g["name"]) == GROUP), None)
            pending = int(group["pending"]) if group else 0
            lag = int(group.get("lag") or 0) if group else length
            jobs = {state: 0 for state in JobState}
            states = {state.value for state in JobState}
            for name, value in counts.items():
                if _text(name) in states:  # not input_bytes
                    jobs[JobState(_text(name))] = int(value)
            oldest_waiting_s = 0.0
            if lag and group:
                # The first entry after the group's last delivered one waits longest. Its id is
                # Redis's clock in ms at XADD, so Redis's own TIME gives its age (no skew
                # between this host's clock and Redis's).
                after = _text(group["last-delivered-id"])
                first = self._client.xrange(self._stream, min=f"({after}", count=1)
                if first:
                    submitted_ms = int(_text(first[0][0]).split("-")[0])
                    now_ms = int(seconds) * 1000 + int(micros) // 1000
                    oldest_waiting_s = max(0.0, (now_ms - submitted_ms) / 1000)
            return QueueStats(length, lag, pending, int(dead), jobs, oldest_waiting_s)

        return self._call(run)

    def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        def run() -> list[DeadLetter]:
            entries = self._client.xrevrange(self._dead, count=count)
            letters = [
                DeadLetter(
                    _text(entry_id),
                    _text(fields[b"job"]),
                    _text(fields[b"reason"]),
                    int(fields[b"deliveries"]),
                )
                for entry_id, fields in entries
            ]
            return letters[::-1]

        return self._call(run)

    # -- the workers' side -----------------------------------------------------------------

    def claim(self, consumer: str, wait_seconds: float) -> Lease | None:
        return self._call(lambda: self._claim(consumer, wait_seconds))

    def _claim(self, consumer: str, wait_seconds: float) -> Lease | None:
        self._ensure_group()
        give_up = time.monotonic() + wait_seconds
        while True:
            entry = self._next_entry(consumer, max(0.0, give_up - time.monotonic()))
            if entry is None:
                return None
            entry_id, fields = entry
            lease = self._start_entry(consumer, entry_id, fields)
            if lease is not None:
                return lease
            if time.monotonic() >= give_up:
                return None

    def _next_entry(self, consumer: str, wait: float) -> tuple[str, dict[bytes, bytes]] | None:
        # 1. This consumer's own pending entries: a worker restarted under the same name.
        if consumer not in self._read_own_pending:
            own = self._client.xreadgroup(GROUP, consumer, {self._stream: "0"}, count=1)
            if own and own[0][1]:
                entry_id, fields = own[0][1][0]
                if fields:
                    return _text(entry_id), fields
            self._read_own_pending.add(consumer)
        # 2. A dead worker's entry whose lease expired.
        cursor, claimed, deleted = self._client.xautoclaim(
            self._stream,
            GROUP,
            consumer,
            min_idle_time=int(self.settings.lease_seconds * 1000),
            start_id=self._autoclaim_cursor,
            count=1,
        )
        self._autoclaim_cursor = _text(cursor)
        for lost in deleted:  # trimmed while pending: trimming here never does this
            log.error("stream entry %s was deleted while pending", _text(lost))
        if claimed:
            entry_id, fields = claimed[0]
            return _text(entry_id), fields
        # 3. A new entry.
        block = int(wait * 1000)
        read = self._client.xreadgroup(
            GROUP, consumer, {self._stream: ">"}, count=1, block=block if block > 0 else None
        )
        if read and read[0][1]:
            entry_id, fields = read[0][1][0]
            return _text(entry_id), fields
        return None

    def _start_entry(
        self, consumer: str, entry_id: str, fields: dict[bytes, bytes]
    ) -> Lease | None:
        job_id = _text(fields[b"job"])
        request = _text(fields.get(b"request", b""))
        pending = self._client.xpending_range(
            self._stream, GROUP, min=entry_id, max=entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        outcome, detail = self._start(
            keys=[self._job(job_id), self._counts, self._stream, self._dead, request],
            args=[
                GROUP,
                entry_id,
                consumer,
                time.time(),
                deliveries,
                self.settings.max_deliveries,
                self._retention_ms,
                job_id,
            ],
        )
        outcome = _text(outcome)
        if outcome != "RUNNING":
            log.info("job %s not run: %s %s", job_id, outcome, _text(detail))
            return None
        spec_field, inputs = self._client.hmget(self._job(job_id), payload.SPEC, payload.INPUTS)
        spec = payload.decode_spec({payload.SPEC: spec_field, payload.INPUTS: inputs or b""})
        return Lease(spec, entry_id, consumer, deliveries)

    def renew(self, lease: Lease) -> Hold:
        answer = self._call(
            lambda: self._renew(
                keys=[self._stream, self._job(lease.job_id)],
                args=[GROUP, lease.entry_id, lease.consumer],
            )
        )
        return {-1: Hold.LOST, 1: Hold.CANCEL_REQUESTED}.get(int(answer), Hold.HELD)

    def progress(self, lease: Lease, fraction: float, evaluations: int) -> None:
        self._call(
            lambda: self._progress(
                keys=[self._stream, self._job(lease.job_id)],
                args=[GROUP, lease.entry_id, lease.consumer, f"{fraction:.6f}", evaluations],
            )
        )

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
        flat: list[Any] = []
        for name, value in (result or {}).items():
            flat += [name, value]
        done = self._call(
            lambda: self._finish(
                keys=[
                    self._job(lease.job_id),
                    self._result(lease.job_id),
                    self._counts,
                    self._stream,
                    self._request(lease.spec.request_id),
                    self._dead,
                ],
                args=[
                    GROUP,
                    lease.entry_id,
                    state.value,
                    time.time(),
                    self._retention_ms,
                    error,
                    stopped_by,
                    evaluations,
                    "1" if dead_letter else "0",
                    lease.job_id,
                    *flat,
                ],
            )
        )
        if dead_letter:
            self._call(
                lambda: self._client.xtrim(
                    self._dead, maxlen=self.settings.max_dead_letters, approximate=True
                )
            )
        return bool(done)

    def release(self, lease: Lease) -> None:
        idle_ms = int(self.settings.lease_seconds * 1000) * 10
        self._call(
            lambda: self._release(
                keys=[self._stream, self._job(lease.job_id), self._counts],
                args=[GROUP, lease.entry_id, lease.consumer, idle_ms, lease.deliveries - 1],
            )
        )

    def trim(self) -> int:
        """XTRIM MINID below both the oldest pending entry and the first undelivered one.
        Safe without a transaction: entries only join the pending list from above the group's
        last-delivered id, and a claim keeps an entry's id (docs/jobs.md)."""

        def run() -> int:
            self._ensure_group()
            groups = self._client.xinfo_groups(self._stream)
            floors = []
            for group in groups:
                last = _text(group["last-delivered-id"])
                millis, sequence = (int(part) for part in last.split("-"))
                floors.append((millis, sequence + 1))
                summary = self._client.xpending(self._stream, _text(group["name"]))
                if summary["pending"]:
                    low = _text(summary["min"])
                    low_millis, low_sequence = (int(part) for part in low.split("-"))
                    floors.append((low_millis, low_sequence))
            if not floors:
                return 0
            millis, sequence = min(floors)
            return int(
                self._client.xtrim(self._stream, minid=f"{millis}-{sequence}", approximate=False)
            )

        return self._call(run)

    def close(self) -> None:
        self._client.close()
