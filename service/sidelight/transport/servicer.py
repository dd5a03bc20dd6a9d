"""The gRPC servicer of sidelight.v1.Explainer: messages in, data plane call, messages out.
Nothing else lives here.

Every RPC goes through `Calls.answer` (sidelight.transport.calls), which times it, counts it in
flight, and turns any error into a status with `sidelight.transport.status` - the one place
where that mapping is made. The Open Inference Protocol's servicer answers the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from sidelight import dataplane as dp
from sidelight.transport import codec
from sidelight.transport.calls import Calls, caller, deadline
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc


class ExplainerServicer(pb_grpc.ExplainerServicer):
    def __init__(self, plane: dp.DataPlane, calls: Calls) -> None:
        self._plane = plane
        self._calls = calls

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        async def answer() -> pb.ListModelsResponse:
            return codec.models_to_proto(self._plane.list_models())

        return await self._calls.answer("ListModels", "", "", context, answer)

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PredictResponse:
        async def answer() -> pb.PredictResponse:
            call = codec.predict_request(request, deadline(context), caller(context))
            return codec.prediction_to_proto(await self._plane.predict(call))

        return await self._calls.answer("Predict", request.model, "", context, answer)

    async def Explain(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ExplainResponse:
        async def answer() -> pb.ExplainResponse:
            call = codec.explain_request(request, deadline(context), caller(context))
            explanation = await self._plane.explain(call)
            self._calls.record_quality(explanation)
            return codec.explanation_to_proto(explanation)

        return await self._calls.answer("Explain", request.model, request.method, context, answer)

    async def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EvaluateResponse:
        async def answer() -> pb.EvaluateResponse:
            call = codec.evaluate_request(request, deadline(context))
            evaluation = await self._plane.evaluate(call)
            return codec.evaluation_to_proto(evaluation)

        return await self._calls.answer("Evaluate", request.model, request.method, context, answer)

    async def SubmitJob(
        self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            call = codec.explain_request(request, deadline(context), caller(context))
            return codec.job_to_proto(await self._plane.submit_job(call))

        return await self._calls.answer("SubmitJob", request.model, request.method, context, answer)

    async def SubmitSanityCheck(
        self, request: pb.SanityCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            call = codec.sanity_check_request(request)
            return codec.job_to_proto(await self._plane.submit_sanity_check(call))

        return await self._calls.answer("SubmitSanityCheck", request.model, "", context, answer)

    async def GetAuditRecord(
        self, request: pb.GetAuditRecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AuditRecord:
        async def answer() -> pb.AuditRecord:
            stored = await self._plane.get_audit_record(request.record_id)
            return codec.audit_record_to_proto(stored)

        return await self._calls.answer("GetAuditRecord", "", "", context, answer)

    async def GetJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            return codec.job_to_proto(await self._plane.get_job(request.job_id))

        return await self._calls.answer("GetJob", "", "", context, answer)

    async def CancelJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Job:
        async def answer() -> pb.Job:
            return codec.job_to_proto(await self._plane.cancel_job(request.job_id))

        return await self._calls.answer("CancelJob", "", "", context, answer)

    async def WatchJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Job]:
        """A stream: errors map to status codes like the unary calls', at any point."""

        async def replies() -> AsyncIterator[pb.Job]:
            async for status in self._plane.watch_job(request.job_id):
                yield codec.job_to_proto(status)

        async for reply in self._calls.stream("WatchJob", context, replies()):
            yield reply
