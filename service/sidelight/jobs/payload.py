"""Jobs and results as stored in a queue: a JSON header plus raw little-endian tensor bytes.

Never pickle: anyone who can write to Redis could otherwise run code in every worker
(rq/rq#2389). Tensors keep the Open Inference Protocol layout the API already speaks, so a
megabyte of pixels costs a megabyte, not the 4/3 of base64.

Both queues, in-process and Redis, store these same field maps (str -> bytes), so that they
behave alike down to what survives a copy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from sidelight.explanations import Explanation, Quality
from sidelight.jobs.spec import JobKind, JobResult, JobSpec, JobState, JobStatus
from sidelight.quality.evaluate import FaithfulnessScores
from sidelight.tensors import RawTensor

Fields = dict[str, bytes]

# The fields of a job record: the spec as queued, then what the queue updates.
SPEC = "spec"
INPUTS = "inputs"
STATE = "state"
FRACTION = "fraction"
EVALUATIONS = "evaluations"
ERROR = "error"
STOPPED_BY = "stopped_by"
DELIVERIES = "deliveries"
STARTED_AT = "started_at"
FINISHED_AT = "finished_at"
CONSUMER = "consumer"
CANCEL_REQUESTED = "cancel_requested"


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def encode_spec(spec: JobSpec) -> Fields:
    header = {
        "job_id": spec.job_id,
        "request_id": spec.request_id,
        "model": spec.model,
        "model_version": spec.model_version,
        "method": spec.method,
        "targets": list(spec.targets),
        "params": dict(spec.params),
        "deadline": spec.deadline,
        "max_evaluations": spec.max_evaluations,
        "submitted_at": spec.submitted_at,
        "digest": spec.digest,
        "evaluate": list(spec.evaluate),
        "kind": spec.kind.value,
        "subject_id": spec.subject_id,
        "caller": spec.caller,
        "dtype": spec.inputs.dtype,
        "shape": list(spec.inputs.shape),
    }
    return {SPEC: _json(header), INPUTS: bytes(spec.inputs.data)}


def decode_spec(fields: Mapping[str, bytes]) -> JobSpec:
    header = json.loads(fields[SPEC])
    return JobSpec(
        job_id=header["job_id"],
        request_id=header["request_id"],
        model=header["model"],
        model_version=header["model_version"],
        method=header["method"],
        inputs=RawTensor(header["dtype"], tuple(header["shape"]), fields.get(INPUTS, b"")),
        targets=tuple(header["targets"]),
        params=header["params"],
        deadline=header["deadline"],
        max_evaluations=header["max_evaluations"],
        submitted_at=header["submitted_at"],
        digest=header["digest"],
        evaluate=tuple(header.get("evaluate", ())),
        kind=JobKind(header.get("kind", JobKind.EXPLAIN.value)),
        subject_id=header.get("subject_id", ""),
        caller=header.get("caller", ""),
    )


def new_record(spec: JobSpec) -> Fields:
    """The fields of a job just accepted."""
    return {
        **encode_spec(spec),
        STATE: JobState.QUEUED.value.encode(),
        FRACTION: b"0",
        EVALUATIONS: b"0",
        DELIVERIES: b"0",
    }


def decode_status(fields: Mapping[str, bytes], result: Mapping[str, bytes] | None) -> JobStatus:
    header = json.loads(fields[SPEC])

    def text(name: str) -> str:
        return fields.get(name, b"").decode()

    def moment(name: str) -> float | None:
        value = text(name)
        return float(value) if value else None

    return JobStatus(
        job_id=header["job_id"],
        state=JobState(text(STATE)),
        request_id=header["request_id"],
        model=header["model"],
        model_version=header["model_version"],
        method=header["method"],
        fraction=float(text(FRACTION) or 0),
        evaluations=int(text(EVALUATIONS) or 0),
        error=text(ERROR),
        stopped_by=text(STOPPED_BY),
        deliveries=int(text(DELIVERIES) or 0),
        submitted_at=header["submitted_at"],
        started_at=moment(STARTED_AT),
        finished_at=moment(FINISHED_AT),
        result=decode_explanation(result) if result and SANITY_REPORT not in result else None,
        sanity_report=json.loads(result[SANITY_REPORT])
        if result and SANITY_REPORT in result
        else None,
    )


SANITY_REPORT = "sanity_report"


def encode_result(result: JobResult) -> Fields:
    if isinstance(result, Explanation):
        return encode_explanation(result)
    return {SANITY_REPORT: _json(result.to_json())}


_ARRAYS = ("outputs", "targets", "attributions")


def encode_explanation(explanation: Explanation) -> Fields:
    quality = explanation.quality
    arrays: dict[str, Any] = {}
    header: dict[str, Any] = {
        "explanation_id": explanation.explanation_id,
        "model": explanation.model,
        "model_version": explanation.model_version,
        "method": explanation.method,
        "request_id": explanation.request_id,
        "quality": {
            "completeness_error": quality.completeness_error,
            "relative_completeness_error": quality.relative_completeness_error,
            "model_evaluations": quality.model_evaluations,
            "seed": quality.seed,
            "baseline_digest": quality.baseline_digest,
            "stopped_by": quality.stopped_by,
            "local_fidelity": quality.local_fidelity,
            "faithfulness": (
                dataclasses.asdict(quality.faithfulness) if quality.faithfulness else None
            ),
        },
        "arrays": arrays,
    }
    fields: Fields = {}
    for name in _ARRAYS:
        array = np.ascontiguousarray(getattr(explanation, name))
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        arrays[name] = {"dtype": little.dtype.str, "shape": list(array.shape)}
        fields[name] = little.tobytes()
    fields["header"] = _json(header)
    return fields


def decode_explanation(fields: Mapping[str, bytes]) -> Explanation:
    header = json.loads(fields["header"])
    arrays = {
        name: np.frombuffer(fields[name], dtype=np.dtype(spec["dtype"]))
        .reshape(spec["shape"])
        .copy()
        for name, spec in header["arrays"].items()
    }
    quality = header["quality"]
    return Explanation(
        explanation_id=header["explanation_id"],
        model=header["model"],
        model_version=header["model_version"],
        method=header["method"],
        outputs=arrays["outputs"],
        targets=arrays["targets"],
        attributions=arrays["attributions"],
        quality=Quality(
            completeness_error=quality["completeness_error"],
            relative_completeness_error=quality["relative_completeness_error"],
            model_evaluations=quality["model_evaluations"],
            seed=quality["seed"],
            baseline_digest=quality["baseline_digest"],
            stopped_by=quality["stopped_by"],
            local_fidelity=quality["local_fidelity"],
            faithfulness=(
                FaithfulnessScores(**quality["faithfulness"])
                if quality.get("faithfulness")
                else None
            ),
        ),
        request_id=header["request_id"],
    )
