"""A small synchronous Python client: numpy in, numpy out. Used by the CLI and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import struct_pb2

from sidelight.transport import codec
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def explain_request(
    model: str,
    inputs: npt.NDArray[Any],
    method: str,
    *,
    targets: Sequence[int] = (),
    params: Mapping[str, Any] | None = None,
    model_version: str = "",
    request_id: str = "",
) -> pb.ExplainRequest:
    message = pb.ExplainRequest(
        model=model,
        model_version=model_version,
        inputs=codec.tensor_to_proto(np.ascontiguousarray(inputs)),
        method=method,
        targets=list(targets),
        request_id=request_id,
    )
    if params:
        struct = struct_pb2.Struct()
        struct.update(dict(params))
        message.params.CopyFrom(struct)
    return message


class Client:
    def __init__(self, target: str, *, timeout: float | None = 60.0) -> None:
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.ExplainerStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_models(self) -> pb.ListModelsResponse:
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)  # type: ignore[no-any-return]

    def predict(self, model: str, inputs: npt.NDArray[Any], **kw: Any) -> pb.PredictResponse:
        request = pb.PredictRequest(
            model=model, inputs=codec.tensor_to_proto(np.ascontiguousarray(inputs)), **kw
        )
        return self.stub.Predict(request, timeout=self.timeout)  # type: ignore[no-any-return]

    def explain(
        self, model: str, inputs: npt.NDArray[Any], method: str, **kw: Any
    ) -> pb.ExplainResponse:
        request = explain_request(model, inputs, method, **kw)
        return self.stub.Explain(request, timeout=self.timeout)  # type: ignore[no-any-return]

    def submit_job(self, model: str, inputs: npt.NDArray[Any], method: str, **kw: Any) -> pb.Job:
        request = explain_request(model, inputs, method, **kw)
        return self.stub.SubmitJob(request, timeout=self.timeout)  # type: ignore[no-any-return]

    def submit_sanity_check(
        self, model: str, inputs: npt.NDArray[Any], methods: list[str], **kw: Any
    ) -> pb.Job:
        request = pb.SanityCheckRequest(
            model=model,
            inputs=codec.tensor_to_proto(np.ascontiguousarray(inputs)),
            methods=methods,
            **kw,
        )
        return self.stub.SubmitSanityCheck(request, timeout=self.timeout)  # type: ignore[no-any-return]

    def get_job(self, job_id: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout)  # type: ignore[no-any-return]

    def cancel_job(self, job_id: str) -> pb.Job:
        return self.stub.CancelJob(pb.GetJobRequest(job_id=job_id), timeout=self.timeout)  # type: ignore[no-any-return]

    def watch_job(self, job_id: str, timeout: float | None = None) -> Iterator[pb.Job]:
        """The job's updates until it ends (no deadline unless `timeout`)."""
        yield from self.stub.WatchJob(pb.GetJobRequest(job_id=job_id), timeout=timeout)


TERMINAL_JOB_STATES = frozenset(
    {pb.JobState.SUCCEEDED, pb.JobState.FAILED, pb.JobState.CANCELLED, pb.JobState.EXPIRED}
)


def to_array(message: pb.Tensor) -> npt.NDArray[Any]:
    return codec.array_from_response(message)
