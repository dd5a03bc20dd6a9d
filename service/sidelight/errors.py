"""Sidelight's typed errors. This module imports no gRPC, Redis or torch.

    SidelightError
    ├── InvalidArgument          the client sent something wrong; names the field
    │   ├── InvalidTensor        inputs: shape, dtype, size, NaN/Inf, range
    │   ├── InvalidTarget        targets: count or class out of range
    │   └── InvalidParams        params: unknown key, wrong type, out of bounds
    ├── NotFound                 the named thing does not exist
    │   ├── ModelNotFound
    │   ├── VersionNotFound
    │   ├── MethodNotFound       unknown method, or one this model does not offer
    │   └── JobNotFound          no such job, or one past its retention
    ├── Overloaded               the queue is full: try again later
    ├── DeadlineExceeded         the caller's deadline passed before the work could finish
    ├── Unavailable              the server is shutting down or a dependency is down
    └── ConfigError              a model repository entry is wrong (raised at start)

The transport maps these to status codes in one table (sidelight.transport.status); anything
else that escapes is a bug and becomes INTERNAL with a message that leaks nothing.
"""

from __future__ import annotations


class SidelightError(Exception):
    """Base of every error Sidelight raises on purpose."""


class InvalidArgument(SidelightError):
    """A request field is wrong. `field` is its dotted path, e.g. "params.n_steps"."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class InvalidTensor(InvalidArgument):
    pass


class InvalidTarget(InvalidArgument):
    pass


class InvalidParams(InvalidArgument):
    pass


class NotFound(SidelightError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class ModelNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class MethodNotFound(NotFound):
    pass


class JobNotFound(NotFound):
    pass


class Overloaded(SidelightError):
    """Admitting the request would exceed a configured capacity."""


class DeadlineExceeded(SidelightError):
    pass


class Unavailable(SidelightError):
    pass


class ConfigError(SidelightError):
    """A file of the model repository is wrong. Names the file and, where known, the field."""

    def __init__(self, path: str, field: str | None, problem: str) -> None:
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.field = field
        self.problem = problem
