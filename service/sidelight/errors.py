"""Sidelight's typed errors. This module imports no gRPC, Redis or torch.

    SidelightError
    ├── InvalidArgument          the client sent something wrong; names the field
    │   ├── InvalidTensor        inputs: shape, dtype, size, NaN/Inf, range
    │   ├── InvalidTarget        targets: count or class out of range
    │   ├── InvalidParams        params: unknown key, wrong type, out of bounds
    │   └── AuditRecordConflict  an audit record_id already recorded with other content
    ├── NotFound                 the named thing does not exist
    │   ├── ModelNotFound
    │   ├── VersionNotFound
    │   ├── MethodNotFound       unknown method, or one this model does not offer
    │   ├── JobNotFound          no such job, or one past its retention
    │   ├── AuditRecordNotFound  no audit record with that record_id (or one pruned)
    │   └── SubjectErased        the subject's key is gone: its stored inputs cannot be read
    ├── Overloaded               the queue is full: try again later
    ├── DeadlineExceeded         the caller's deadline passed before the work could finish
    ├── FailedPrecondition       the request is sound, but this model cannot serve it as
    │                            configured (a gradient method on a remote model)
    ├── Unavailable              the server is shutting down or a dependency is down
    │   ├── AuditUnavailable     the audit store cannot be reached or written
    │   └── RemoteModelError     a remote model's endpoint failed or answered wrongly
    ├── JobFailed                a job waited for within the call ended without a result
    │   └── JobCancelled         ... because CancelJob cancelled it
    └── ConfigError              a model repository entry is wrong (raised at start)

InvalidArgument, NotFound and FailedPrecondition name a field (`FieldError`): a protocol that
names the request's fields otherwise (the Open Inference Protocol) renames it at its boundary.

The transport maps these to status codes in one table (sidelight.transport.status); anything
else that escapes is a bug and becomes INTERNAL with a message that leaks nothing.
"""

from __future__ import annotations

from typing import Self

# The most of a client's string an error message repeats: enough to recognise it, never a
# megabyte sent back (or logged) because a caller put one where a name was expected.
ECHO_CHARS = 64


def shown(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` as an error message quotes it: repr, clipped to `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


class SidelightError(Exception):
    """Base of every error Sidelight raises on purpose."""


class FieldError(SidelightError):
    """An error about one field of the request. `field` is its dotted path, e.g.
    "params.n_steps", as sidelight.v1 names it; `problem` says what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def renamed(self, field: str) -> Self:
        """The same error about `field`: the path another protocol gives the same field."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.args = (f"{field}: {self.problem}",)
        clone.field = field
        return clone


class InvalidArgument(FieldError):
    """A request field is wrong."""


class InvalidTensor(InvalidArgument):
    pass


class InvalidTarget(InvalidArgument):
    pass


class InvalidParams(InvalidArgument):
    pass


class AuditRecordConflict(InvalidArgument):
    """A record_id is already in the audit log with different content. The same record
    appended again (a retry after an unknown commit outcome) is not a conflict."""

    def __init__(self, record_id: str) -> None:
        super().__init__("record_id", f"{record_id!r} is already recorded with other content")
        self.record_id = record_id


class NotFound(FieldError):
    pass


class ModelNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class MethodNotFound(NotFound):
    pass


class JobNotFound(NotFound):
    pass


class AuditRecordNotFound(NotFound):
    def __init__(self, record_id: str) -> None:
        super().__init__("record_id", f"no audit record {record_id!r}")
        self.record_id = record_id


class SubjectErased(NotFound):
    """No key for the subject: it was erased (crypto-shredding) or never stored an input."""

    def __init__(self, subject_id: str) -> None:
        super().__init__("subject_id", f"no key for subject {subject_id!r}: erased or never stored")
        self.subject_id = subject_id


class Overloaded(SidelightError):
    """Admitting the request would exceed a configured capacity. `retry_after_s`: how long
    the caller should wait before trying again (sent as `retry-after` trailing metadata)."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(SidelightError):
    pass


class FailedPrecondition(FieldError):
    """The request is well formed but the system is not in a state to serve it: a gradient
    method asked of a model served elsewhere. Names the field and what to configure instead."""


class Unavailable(SidelightError):
    """`str()` is for the operator (the server's log, the CLI) and may name a host, a port or a
    user; `public` is what a client is told: never where a dependency lives or who logs in."""

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public = message if public is None else public


class AuditUnavailable(Unavailable):
    """The audit store is down or refused the write. The message names the store by a URL
    with its password hidden; the public one does not name it."""


class RemoteModelError(Unavailable):
    """A remote model's endpoint (an Open Inference Protocol or TorchServe gRPC server) did
    not answer, or answered something Sidelight cannot use, after the retries that were safe.
    `status` is the endpoint's gRPC status name (UNAVAILABLE, DEADLINE_EXCEEDED, ...), or
    BAD_RESPONSE when the call succeeded but its answer does not fit the model's config."""

    def __init__(self, endpoint: str, model: str, status: str, detail: str) -> None:
        super().__init__(f"remote model {model} at {endpoint}: {status}: {detail}")
        self.endpoint = endpoint
        self.model = model
        self.status = status
        self.detail = detail


class JobFailed(SidelightError):
    """A job the call waited for (a perturbation method asked through a synchronous protocol)
    ended without a result: the message says why, as the job's own record does (GetJob)."""

    def __init__(self, job_id: str, problem: str) -> None:
        super().__init__(f"job {job_id}: {problem}")
        self.job_id = job_id


class JobCancelled(JobFailed):
    pass


class ConfigError(SidelightError):
    """A file of the model repository is wrong. Names the file and, where known, the field."""

    def __init__(self, path: str, field: str | None, problem: str) -> None:
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.field = field
        self.problem = problem
