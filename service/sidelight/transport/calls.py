"""How every RPC is answered, whichever service it belongs to (sidelight.v1.Explainer or the
Open Inference Protocol's inference.GRPCInferenceService): timed, counted in flight, and any
error turned into a status by `sidelight.transport.status`, the one place that mapping is made.

Also what both services read off a call the same way: who is asking (for the audit log) and
the deadline.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from sidelight import dataplane as dp
from sidelight.errors import Overloaded
from sidelight.explanations import Explanation
from sidelight.methods.catalog import METHODS
from sidelight.metrics import Metrics
from sidelight.transport.status import status_for

Reply = TypeVar("Reply")
Context = grpc.aio.ServicerContext[Any, Any]

# An unauthenticated caller may name itself in this header; the audit log records it as such.
CALLER_HEADER = "sidelight-caller"
MAX_CALLER_CHARS = 200
# Trailing metadata of a RESOURCE_EXHAUSTED status: seconds to wait before retrying.
RETRY_AFTER = "retry-after"
CALLS_FULL_RETRY_S = 1.0


class Calls:
    """The accounting of one server's RPCs, shared by its servicers."""

    def __init__(
        self, metrics: Metrics, models: Iterable[str], max_in_flight: int | None = None
    ) -> None:
        self._metrics = metrics
        self._known_models = frozenset(models)
        # Calls answered at once, across both services; more are refused at once with a retry
        # delay. The health service does not count (it is not answered here): a server full of
        # long WatchJob streams still answers its probes, so Kubernetes does not restart it.
        self._max_in_flight = max_in_flight
        self._active = 0
        # Labelled children, looked up once: `labels()` costs more than the observation. The
        # label values are bounded (see `labels`), so are these caches.
        self._in_flight = functools.cache(metrics.rpc_in_flight.labels)
        self._duration = functools.cache(metrics.rpc_duration.labels)

    async def answer(
        self,
        rpc: str,
        model: str,
        method: str,
        context: Context,
        answer: Callable[[], Awaitable[Reply]],
    ) -> Reply:
        """`answer()`'s reply, or the status its error maps to (the call is aborted)."""
        model_label, method_label = self._labels(model, method)
        in_flight = self._in_flight(rpc)
        in_flight.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        admitted = False
        try:
            self._admit()
            admitted = True
            return await answer()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if isinstance(exc, Overloaded):
                self._metrics.rejected.labels(model_label).inc()
                _retry_after(context, exc)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            if admitted:
                self._active -= 1
            in_flight.dec()
            self._duration(rpc, model_label, method_label, code.name).observe(
                time.perf_counter() - started
            )

    async def stream(
        self, rpc: str, context: Context, replies: AsyncIterator[Reply]
    ) -> AsyncIterator[Reply]:
        """`replies`, passed on; an error maps to a status like a unary call's, at any point."""
        in_flight = self._in_flight(rpc)
        in_flight.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        admitted = False
        try:
            self._admit()
            admitted = True
            async for reply in replies:
                yield reply
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if isinstance(exc, Overloaded):
                _retry_after(context, exc)
            await context.abort(code, message)
        finally:
            if admitted:
                self._active -= 1
            in_flight.dec()
            self._duration(rpc, "", "", code.name).observe(time.perf_counter() - started)

    def _admit(self) -> None:
        """Count one more call in, or Overloaded when as many as allowed are being answered
        (runs on the event loop's thread only: no lock)."""
        if self._max_in_flight is not None and self._active >= self._max_in_flight:
            raise Overloaded(
                f"{self._active} calls are being answered (limit {self._max_in_flight}); "
                "retry later",
                retry_after_s=CALLS_FULL_RETRY_S,
            )
        self._active += 1

    def record_quality(self, explanation: Explanation) -> None:
        labels = (explanation.model, explanation.method)
        self._metrics.model_evaluations.labels(*labels).inc(explanation.quality.model_evaluations)
        histogram = self._metrics.completeness_error.labels(*labels)
        for value in explanation.quality.relative_completeness_error:
            histogram.observe(value)

    def _labels(self, model: str, method: str) -> tuple[str, str]:
        """Label values from what clients send, bounded: a name not served is "unknown"."""
        model_label = model if model in self._known_models else ("" if not model else "unknown")
        method_label = method if method in METHODS else ("" if not method else "unknown")
        return model_label, method_label


def _retry_after(context: Context, exc: Overloaded) -> None:
    """How long to wait before retrying, in whole seconds, as HTTP's Retry-After says it:
    trailing metadata `retry-after` on the RESOURCE_EXHAUSTED status."""
    context.set_trailing_metadata(((RETRY_AFTER, str(max(1, math.ceil(exc.retry_after_s)))),))


def caller(context: Context) -> str:
    """Who is asking, for the audit log: the TLS client certificate's name when the channel
    authenticated one; else the caller header, marked as self-declared; else the peer address."""
    auth = context.auth_context() or {}
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names = list(auth.get(key) or ())
        if names:
            name = bytes(names[0]).decode(errors="replace")
            return "tls:" + name[:MAX_CALLER_CHARS]
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_HEADER and isinstance(value, str):
            return "header:" + value[:MAX_CALLER_CHARS]
    return "peer:" + (context.peer() or "")


def deadline(context: Context) -> float | None:
    """The call's deadline on time.monotonic()'s clock, if the client set one."""
    return dp.monotonic_deadline(context.time_remaining())
