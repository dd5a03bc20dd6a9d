"""The Open Inference Protocol's gRPC service (inference.GRPCInferenceService), on Sidelight's
own port: messages in, the same data plane as sidelight.v1.Explainer, messages out.

Triton's and KServe's clients work unchanged: ModelInfer predicts, and explains when asked
(see sidelight.transport.oip_codec for the parameters). Every call is answered through the
shared `Calls` (timed, counted, errors mapped by the one table); errors name the protocol's
fields. Unknown models, versions and methods are NOT_FOUND on every call, ModelReady included
(Triton answers ModelReady of a model it does not know with an error too, which tritonclient
raises); a version that is not a number is INVALID_ARGUMENT, as in Triton. ModelReady is false
for a model that failed to load (as Triton's UNAVAILABLE state) and for a remote model whose
endpoint is down, and false for every model while the server is not ready.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import grpc

from sidelight import dataplane as dp
from sidelight.oip import grpc_service_pb2 as oip
from sidelight.oip import grpc_service_pb2_grpc as oip_grpc
from sidelight.transport import oip_codec
from sidelight.transport.calls import Calls, caller, deadline
from sidelight.transport.oip_fields import lookup_field, renaming
from sidelight.transport.readiness import Readiness

Context = grpc.aio.ServicerContext[Any, Any]


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: dp.DataPlane, calls: Calls, readiness: Readiness) -> None:
        self._plane = plane
        self._calls = calls
        self._readiness = readiness
        self._version = importlib.metadata.version("sidelight")

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        async def answer() -> oip.ServerLiveResponse:
            return oip.ServerLiveResponse(live=True)  # answering is being live

        return await self._calls.answer("ServerLive", "", "", context, answer)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        async def answer() -> oip.ServerReadyResponse:
            return oip.ServerReadyResponse(ready=self._readiness.ready)

        return await self._calls.answer("ServerReady", "", "", context, answer)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        async def answer() -> oip.ModelReadyResponse:
            oip_codec.model_version(request.version, "version")
            with renaming(lookup_field):
                ready = self._plane.model_ready(request.name, request.version)
            return oip.ModelReadyResponse(ready=ready and self._readiness.ready)

        return await self._calls.answer("ModelReady", request.name, "", context, answer)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        async def answer() -> oip.ServerMetadataResponse:
            return oip_codec.server_metadata(self._version)

        return await self._calls.answer("ServerMetadata", "", "", context, answer)

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        async def answer() -> oip.ModelMetadataResponse:
            description = self._describe(request.name, request.version)
            return oip_codec.model_metadata(description, request.version)

        return await self._calls.answer("ModelMetadata", request.name, "", context, answer)

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        async def answer() -> oip.ModelInferResponse:
            call = oip_codec.infer_call(request, deadline(context), caller(context))
            with renaming(call.fields.rename):
                if isinstance(call.request, dp.PredictRequest):
                    prediction = await self._plane.predict(call.request)
                    return oip_codec.prediction_response(request, call, prediction)
                explained = await self._plane.explain_within_call(call.request)
            if not explained.job_id:  # a job's figures are the workers' to count, as for SubmitJob
                self._calls.record_quality(explained.explanation)
            return oip_codec.explanation_response(request, call, explained)

        method = oip_codec.method_of(request)
        return await self._calls.answer("ModelInfer", request.model_name, method, context, answer)

    def _describe(self, name: str, version: str) -> dp.ModelDescription:
        oip_codec.model_version(version, "version")
        with renaming(lookup_field):
            return self._plane.describe_model(name, version)
