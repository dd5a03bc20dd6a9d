"""The one table from domain errors to gRPC status codes.

Looked up along the exception's class hierarchy, so a new subclass inherits its parent's code.
Anything not in the table is a bug: the client gets INTERNAL with an incident id and nothing of
the exception, and the server log gets the traceback under the same id.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from sidelight import errors

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    # A remote model's endpoint failed: UNAVAILABLE whatever the endpoint's own code was (the
    # caller's request was sound; the message carries the endpoint's status).
    errors.RemoteModelError: grpc.StatusCode.UNAVAILABLE,
    # The job's error is data the client may read anyway (GetJob): passed on, not hidden.
    errors.JobFailed: grpc.StatusCode.INTERNAL,
    errors.JobCancelled: grpc.StatusCode.ABORTED,
}


# The longest status message sent: client strings are echoed clipped (errors.shown), and this
# bounds the rest (a list of known names, a nested reason).
MAX_MESSAGE_CHARS = 500


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) to send for `exc`. A dependency's error is sent as its public message
    (no host, port or user) and logged here whole."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            message = str(exc)
            if isinstance(exc, errors.Unavailable) and exc.public != message:
                log.warning("%s (the client is told: %s)", message, exc.public)
                message = exc.public
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[: MAX_MESSAGE_CHARS - 3] + "..."
            return code, message
    incident = uuid.uuid4().hex[:12]
    log.error("internal error, incident %s", incident, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"
