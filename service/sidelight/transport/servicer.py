"""The gRPC servicer: messages in, data plane call, messages out. Nothing else lives here.

Every RPC goes through `_answer`, which times it, counts it in flight, and turns any error into
a status with `sidelight.transport.status` - the one place where that mapping is made.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sidelight import dataplane as dp
from sidelight.errors import Overloaded
from sidelight.explanations import Explanation
from sidelight.methods.catalog import METHODS
from sidelight.metrics import Metrics
from sidelight.transport import codec
from sidelight.transport.status import status_for
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

Reply = TypeVar("Reply")


class ExplainerServicer(pb_grpc.ExplainerServicer):
    def __init__(self, plane: dp.DataPlane, metrics: Metrics) -> None:
        self._plane = plane
        self._metrics = metrics
        self._known_models = set(plane.registry.names())
        # Labelled children, looked up once: `labels()` costs more than the observation. The
        # label values are bounded (see `_answer`), so are these caches.
        self._in_flight = functools.cache(metrics.rpc_in_flight.labels)
        self._duration = functools.cache(metrics.rpc_duration.labels)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        async def answer() -> pb.ListModelsResponse:
            return codec.models_to_proto(self._plane.list_models())

        return await self._answer("ListModels", "", "", context, answer)

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PredictResponse:
        async def answer() -> pb.PredictResponse:
            call = codec.predict_request(request, _deadline(context), caller(context))
            return codec.prediction_to_proto(await self._plane.predict(call))

        return await self._answer("Predict", request.model, "", context, answer)

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExplainResponse:
        async def answer() -> pb.ExplainResponse:
            call = codec.explain_request(request, _deadline(context), caller(context))
            explanation = await self._plane.explain(call)
            self._record_quality(explanation)
            return codec.explanation_to_proto(explanation)

        return await self._answer("Explain", request.model, request.method, context, answer)

    async def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EvaluateResponse:
        async def answer() -> pb.EvaluateResponse:
            evaluation = await self._plane.evaluate(codec.evaluate_request(request))
            return codec.evaluation_to_proto(evaluation)

        return await self._answer("Evaluate", request.model, request.method, context, answer)

    async def SubmitJob(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            call = codec.explain_request(request, _deadline(context), caller(context))
            return codec.job_to_proto(await self._plane.submit_job(call))

        return await self._answer("SubmitJob", request.model, request.method, context, answer)

    async def SubmitSanityCheck(
        self, request: pb.SanityCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            call = codec.sanity_check_request(request)
            return codec.job_to_proto(await self._plane.submit_sanity_check(call))

        return await self._answer("SubmitSanityCheck", request.model, "", context, answer)

    async def GetAuditRecord(
        self, request: pb.GetAuditRecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuditRecord:
        async def answer() -> pb.AuditRecord:
            stored = await self._plane.get_audit_record(request.record_id)
            return codec.audit_record_to_proto(stored)

        return await self._answer("GetAuditRecord", "", "", context, answer)

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            return codec.job_to_proto(await self._plane.get_job(request.job_id))

        return await self._answer("GetJob", "", "", context, answer)

    async def CancelJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            return codec.job_to_proto(await self._plane.cancel_job(request.job_id))

        return await self._answer("CancelJob", "", "", context, answer)

    async def WatchJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Job]:
        """A stream: errors map to status codes like the unary calls', at any point."""
        in_flight = self._in_flight("WatchJob")
        in_flight.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async for status in self._plane.watch_job(request.job_id):
                yield codec.job_to_proto(status)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            await context.abort(code, message)
        finally:
            in_flight.dec()
            self._duration("WatchJob", "", "", code.name).observe(time.perf_counter() - started)

    async def _answer(
        self,
        rpc: str,
        model: str,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        answer: Callable[[], Awaitable[Reply]],
    ) -> Reply:
        model_label = model if model in self._known_models else ("" if not model else "unknown")
        method_label = method if method in METHODS else ("" if not method else "unknown")
        in_flight = self._in_flight(rpc)
        in_flight.inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await answer()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            if isinstance(exc, Overloaded):
                self._metrics.rejected.labels(model_label).inc()
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            in_flight.dec()
            self._duration(rpc, model_label, method_label, code.name).observe(
                time.perf_counter() - started
            )

    def _record_quality(self, explanation: Explanation) -> None:
        labels = (explanation.model, explanation.method)
        self._metrics.model_evaluations.labels(*labels).inc(explanation.quality.model_evaluations)
        histogram = self._metrics.completeness_error.labels(*labels)
        for value in explanation.quality.relative_completeness_error:
            histogram.observe(value)


# An unauthenticated caller may name itself in this header; the audit log records it as such.
CALLER_HEADER = "sidelight-caller"
MAX_CALLER_CHARS = 200


def caller(context: grpc.aio.ServicerContext[Any, Any]) -> str:
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


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    return dp.monotonic_deadline(context.time_remaining())
