"""Calls of a model served over the Open Inference Protocol's gRPC API (Triton, KServe,
MLServer): ModelInfer with the rows as one raw little-endian tensor, ModelReady for health.

Outputs come back raw (`raw_output_contents`, which servers use when the request was raw) or
typed (`contents`); both are read.
"""

from __future__ import annotations

import grpc
import numpy as np

from sidelight import tensors
from sidelight.models.remote.client import BadResponse
from sidelight.models.remote.config import RemoteConfig
from sidelight.oip import grpc_service_pb2 as pb
from sidelight.oip import grpc_service_pb2_grpc as pb_grpc

# The float outputs Sidelight reads (tensors.DTYPES has their little-endian numpy types).
_FLOATS = ("FP16", "FP32", "FP64")
_TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents"}  # FP16 travels raw only


class OipEndpoint:
    def __init__(self, config: RemoteConfig, channel: grpc.Channel) -> None:
        self._config = config
        self._channel = channel
        self._stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

    def infer(self, rows: np.ndarray, timeout: float) -> np.ndarray:
        datatype, shape, data = tensors.encode(rows)  # the config's float type, as it travels
        request = pb.ModelInferRequest(
            model_name=self._config.model_name,
            model_version=self._config.model_version,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=self._config.input_name,
                    datatype=datatype,
                    shape=shape,
                )
            ],
            raw_input_contents=[data],
        )
        if self._config.output_name:
            request.outputs.add(name=self._config.output_name)
        response = self._stub.ModelInfer(request, timeout=timeout)
        return self._output(response)

    def ready(self, timeout: float) -> bool:
        request = pb.ModelReadyRequest(
            name=self._config.model_name, version=self._config.model_version
        )
        return bool(self._stub.ModelReady(request, timeout=timeout).ready)

    def close(self) -> None:
        self._channel.close()

    def _output(self, response: pb.ModelInferResponse) -> np.ndarray:
        names = [output.name for output in response.outputs]
        wanted = self._config.output_name
        if not names or (wanted and wanted not in names):
            raise BadResponse(f"returned outputs {names}, not {wanted or 'any'!r}")
        index = names.index(wanted) if wanted else 0
        output = response.outputs[index]
        shape = tuple(int(d) for d in output.shape)
        if response.raw_output_contents:
            if output.datatype not in _FLOATS or index >= len(response.raw_output_contents):
                raise BadResponse(f"output {output.name!r} is raw {output.datatype}, not a float")
            values = np.frombuffer(
                response.raw_output_contents[index], tensors.DTYPES[output.datatype]
            )
        elif output.datatype in _TYPED:
            values = np.asarray(getattr(output.contents, _TYPED[output.datatype]))
        else:
            raise BadResponse(f"output {output.name!r} is {output.datatype}, not FP32 or FP64")
        if values.size != int(np.prod(shape)):
            raise BadResponse(
                f"output {output.name!r} holds {values.size} values for {list(shape)}"
            )
        return values.reshape(shape)
