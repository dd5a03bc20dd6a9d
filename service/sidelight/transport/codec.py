"""Protobuf messages <-> the data plane's dataclasses. The only place both are in sight."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import struct_pb2

from sidelight import dataplane as dp
from sidelight import tensors
from sidelight.audit.store import StoredRecord
from sidelight.explanations import Explanation
from sidelight.jobs.spec import JobStatus
from sidelight.quality.evaluate import FaithfulnessScores
from sidelight.v1 import explainer_pb2 as pb


def tensor_from_proto(field: str, message: pb.Tensor) -> npt.NDArray[Any]:
    return raw_tensor(message).decode(field)


def raw_tensor(message: pb.Tensor) -> tensors.RawTensor:
    return tensors.RawTensor(message.dtype, tuple(message.shape), message.data)


def tensor_to_proto(array: npt.NDArray[Any]) -> pb.Tensor:
    dtype, shape, data = tensors.encode(array)
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


def params_from_proto(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A request's params as plain values, as json_format.MessageToDict gives them, except
    that NaN and Inf are kept: MessageToDict raises ValueError for them (an INTERNAL error),
    and the data plane refuses them naming the key (sidelight.validation.finite_params)."""
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return params_from_proto(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def explain_request(
    message: pb.ExplainRequest, deadline: float | None, caller: str = ""
) -> dp.ExplainRequest:
    return dp.ExplainRequest(
        model=message.model,
        model_version=message.model_version,
        inputs=raw_tensor(message.inputs),
        method=message.method,
        targets=list(message.targets),
        params=params_from_proto(message.params),
        request_id=message.request_id,
        deadline=deadline,
        subject_id=message.subject_id,
        caller=caller,
    )


def sanity_check_request(message: pb.SanityCheckRequest) -> dp.SanityCheckRequest:
    return dp.SanityCheckRequest(
        model=message.model,
        model_version=message.model_version,
        inputs=raw_tensor(message.inputs),
        methods=list(message.methods),
        mode=message.mode,
        seed=message.seed,
        request_id=message.request_id,
    )


def evaluate_request(message: pb.EvaluateRequest, deadline: float | None) -> dp.EvaluateRequest:
    return dp.EvaluateRequest(
        model=message.model,
        model_version=message.model_version,
        inputs=raw_tensor(message.inputs),
        attributions=raw_tensor(message.attributions),
        targets=list(message.targets),
        metrics=list(message.metrics),
        method=message.method,
        params=params_from_proto(message.params),
        steps=message.steps,
        reference=message.reference,
        request_id=message.request_id,
        deadline=deadline,
    )


def faithfulness_to_proto(scores: FaithfulnessScores) -> pb.Faithfulness:
    return pb.Faithfulness(
        deletion_auc=scores.deletion_auc,
        insertion_auc=scores.insertion_auc,
        random_deletion_auc=scores.random_deletion_auc,
        random_insertion_auc=scores.random_insertion_auc,
        infidelity=scores.infidelity,
        max_sensitivity=scores.max_sensitivity,
        reference=scores.reference,
        steps=scores.steps,
    )


def evaluation_to_proto(evaluation: dp.Evaluation) -> pb.EvaluateResponse:
    scores = evaluation.scores
    return pb.EvaluateResponse(
        faithfulness=faithfulness_to_proto(scores),
        targets=evaluation.targets.tolist(),
        model_evaluations=scores.evaluations,
        request_id=evaluation.request_id,
    )


def predict_request(
    message: pb.PredictRequest, deadline: float | None, caller: str = ""
) -> dp.PredictRequest:
    return dp.PredictRequest(
        model=message.model,
        model_version=message.model_version,
        inputs=raw_tensor(message.inputs),
        request_id=message.request_id,
        deadline=deadline,
        subject_id=message.subject_id,
        caller=caller,
    )


def explanation_to_proto(explanation: Explanation) -> pb.ExplainResponse:
    quality = explanation.quality
    return pb.ExplainResponse(
        explanation_id=explanation.explanation_id,
        outputs=tensor_to_proto(explanation.outputs),
        targets=explanation.targets.tolist(),
        attributions=tensor_to_proto(explanation.attributions),
        quality=pb.Quality(
            completeness_error=quality.completeness_error,
            relative_completeness_error=quality.relative_completeness_error,
            model_evaluations=quality.model_evaluations,
            seed=quality.seed,
            baseline_digest=quality.baseline_digest,
            partial=bool(quality.stopped_by),
            stopped_by=quality.stopped_by,
            local_fidelity=quality.local_fidelity,
            faithfulness=(
                faithfulness_to_proto(quality.faithfulness) if quality.faithfulness else None
            ),
        ),
        model=explanation.model,
        model_version=explanation.model_version,
        method=explanation.method,
        request_id=explanation.request_id,
    )


def job_to_proto(status: JobStatus) -> pb.Job:
    return pb.Job(
        job_id=status.job_id,
        state=status.state.value,  # the enum's value names match the .proto's
        progress=pb.JobProgress(fraction=status.fraction, model_evaluations=status.evaluations),
        error=status.error,
        result=explanation_to_proto(status.result) if status.result is not None else None,
        request_id=status.request_id,
        model=status.model,
        model_version=status.model_version,
        method=status.method,
        deliveries=status.deliveries,
        submitted_at=status.submitted_at,
        started_at=status.started_at or 0.0,
        finished_at=status.finished_at or 0.0,
        partial=status.partial,
        sanity_report_json=(
            json.dumps(status.sanity_report) if status.sanity_report is not None else ""
        ),
    )


def prediction_to_proto(prediction: dp.Prediction) -> pb.PredictResponse:
    return pb.PredictResponse(
        outputs=tensor_to_proto(prediction.outputs),
        predicted=prediction.predicted.tolist(),
        model=prediction.model,
        model_version=prediction.model_version,
        request_id=prediction.request_id,
    )


def models_to_proto(models: list[dp.ModelSummary]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelInfo(
                name=m.name,
                versions=m.versions,
                latest_version=m.latest_version,
                task=m.task,
                input=pb.InputSpec(
                    shape=m.input_shape,
                    dtype=m.input_dtype,
                    min=m.input_range[0] if m.input_range else None,
                    max=m.input_range[1] if m.input_range else None,
                    feature_names=m.feature_names,
                ),
                labels=m.labels,
                output_kind=m.output_kind,
                methods=[
                    pb.MethodInfo(
                        name=x.name,
                        mode=x.mode,
                        attribution_shape=x.attribution_shape,
                        params_schema=x.params_schema,
                    )
                    for x in m.methods
                ],
                description=m.description,
            )
            for m in models
        ]
    )


def array_from_response(message: pb.Tensor) -> npt.NDArray[Any]:
    """For clients: a writable copy of a response tensor."""
    return np.array(tensor_from_proto("tensor", message))


def audit_record_to_proto(stored: StoredRecord) -> pb.AuditRecord:
    record = stored.record
    attributions = np.frombuffer(record.attributions, dtype="<f4").reshape(
        record.attributions_shape
    )
    return pb.AuditRecord(
        record_id=record.record_id,
        seq=stored.seq,
        content_json=record.canonical_content().decode(),
        prev_hash=stored.prev_hash,
        hash=stored.hash,
        attributions=tensor_to_proto(attributions) if record.attributions else None,
        has_encrypted_input=bool(record.encrypted_input),
    )
