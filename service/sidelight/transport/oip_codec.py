"""Open Inference Protocol messages <-> the data plane's dataclasses.

ModelInfer predicts; with the request parameter `explain_method` it also explains:

    parameters                        (InferParameter)
      explain_method: "integrated_gradients"         string: the method (predicts without it)
      explain_targets: 3 | "[3, 1, 4]"               int64: one class for every row; string:
                                                     a JSON list, one per row (or one for all)
      explain_params: '{"n_steps": 64}'              string: the method's params, a JSON object
      explain_params.n_steps: 64                     one param, typed (bool, int, double, string)
      subject_id: "customer-17"                      string: whom the decision is about (audit)
    inputs
      input    the model's input, [N, ...] (ModelMetadata gives name, datatype and shape)
      targets  INT64 or INT32, [N] or [1]: the classes to explain (or explain_targets; not both)
    outputs
      output, predicted                              always: probabilities [N, classes] (FP32),
                                                     the predicted class [N] (INT64)
      attributions, targets                          with explain_method: [N, ...] (FP32) and
                                                     the class explained per row [N] (INT64)
      completeness_error, relative_completeness_error, local_fidelity
                                                     [N] (FP64), when the method reports them
    response parameters (with explain_method)
      explanation_id (= the audit record's id), explain_method, model_evaluations, seed,
      baseline_digest, partial and stopped_by (a job stopped early), job_id (perturbation
      methods, which run as a job the call waits for)

Sidelight reads the parameters above; any other whose name starts with "explain" is refused as
a likely typo; the rest (Triton's `priority`, `timeout`, `sequence_id`, ..., MLServer's
`content_type`) are other servers' conventions and are ignored. The data plane names fields as
sidelight.v1 does; `InferFields.rename` gives the same field's path in this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sidelight import dataplane as dp
from sidelight.errors import InvalidArgument, InvalidTarget
from sidelight.oip import grpc_service_pb2 as oip
from sidelight.transport import oip_parameters, oip_tensors
from sidelight.transport.oip_fields import InferFields
from sidelight.transport.oip_parameters import (
    METHOD_PARAM,
    PARAMS_PARAM,
    TARGETS_PARAM,
    ExplainParameters,
    Scalar,
)

SERVER_NAME = "sidelight"
# Sidelight's addition to ModelInfer (the parameters above); the protocol defines none.
EXTENSIONS = ("sidelight_explain",)
# ModelMetadata's platform per model file format: Triton's name where Triton serves the same
# file (a TorchScript archive is "pytorch_libtorch" there), a name in its style otherwise.
PLATFORMS = {
    "torchscript": "pytorch_libtorch",
    "torch_export": "pytorch_torch_export",
    "onnx": "onnxruntime_onnx",
}

INPUT = "input"
TARGETS = "targets"
OUTPUT = "output"
PREDICTED = "predicted"
ATTRIBUTIONS = "attributions"
COMPLETENESS = "completeness_error"
RELATIVE_COMPLETENESS = "relative_completeness_error"
LOCAL_FIDELITY = "local_fidelity"
PREDICT_OUTPUTS = (OUTPUT, PREDICTED)
EXPLAIN_OUTPUTS = (
    *PREDICT_OUTPUTS,
    ATTRIBUTIONS,
    TARGETS,
    COMPLETENESS,
    RELATIVE_COMPLETENESS,
    LOCAL_FIDELITY,
)

TARGET_DTYPES = ("INT64", "INT32")


@dataclass(frozen=True)
class InferCall:
    """A ModelInfer request, decoded: a prediction or an explanation, and how to answer."""

    request: dp.PredictRequest | dp.ExplainRequest
    outputs: tuple[str, ...]  # the outputs to return, in order
    raw: bool  # answer in raw_output_contents
    fields: InferFields


def method_of(request: oip.ModelInferRequest) -> str:
    """The explanation method asked for, unchecked (for metric labels)."""
    parameter = request.parameters.get(METHOD_PARAM)
    return parameter.string_param if parameter is not None else ""


def model_version(version: str, field: str = "model_version") -> str:
    """Versions are integers in this protocol (Triton refuses others as INVALID_ARGUMENT)."""
    if version and not (version.isascii() and version.isdigit()):
        raise InvalidArgument(field, f"{version!r} is not a version number such as '1'")
    return version


def infer_call(request: oip.ModelInferRequest, deadline: float | None, caller: str) -> InferCall:
    """Decode and check everything the protocol itself says; the data plane checks the rest."""
    model_version(request.model_version)
    parameters = oip_parameters.read(request.parameters)
    oip_tensors.check_raw_count(request)
    input_index, targets_index = _input_indices(request)
    inputs = oip_tensors.read_input(request, input_index)
    raw = bool(request.raw_input_contents)
    if parameters.method is None:
        _only_with_method(parameters, targets_index)
        fields = InferFields(input_index, raw, f"parameters.{TARGETS_PARAM}")
        predict = dp.PredictRequest(
            model=request.model_name,
            model_version=request.model_version,
            inputs=inputs,
            request_id=request.id,
            deadline=deadline,
            subject_id=parameters.subject_id,
            caller=caller,
        )
        return InferCall(predict, _requested(request, PREDICT_OUTPUTS), raw, fields)
    targets, targets_field = _targets(request, parameters, targets_index)
    explain = dp.ExplainRequest(
        model=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        method=parameters.method,
        targets=targets,
        params=parameters.params,
        request_id=request.id,
        deadline=deadline,
        subject_id=parameters.subject_id,
        caller=caller,
    )
    fields = InferFields(input_index, raw, targets_field)
    return InferCall(explain, _requested(request, EXPLAIN_OUTPUTS), raw, fields)


def _only_with_method(parameters: ExplainParameters, targets_index: int | None) -> None:
    if parameters.targets is not None:
        field = f"parameters.{TARGETS_PARAM}"
    elif parameters.params:
        field = f"parameters.{PARAMS_PARAM}"
    elif targets_index is not None:
        field = f"inputs[{targets_index}]"
    else:
        return
    raise InvalidArgument(field, f"explains: give parameters.{METHOD_PARAM} too")


def _input_indices(request: oip.ModelInferRequest) -> tuple[int, int | None]:
    """The indices of the model's input and of the optional targets tensor."""
    found: dict[str, int] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name not in (INPUT, TARGETS):
            raise InvalidArgument(
                f"inputs[{index}].name",
                f"unknown input {tensor.name!r}; the inputs are {INPUT!r} (ModelMetadata) "
                f"and, with {METHOD_PARAM}, {TARGETS!r}",
            )
        if tensor.name in found:
            raise InvalidArgument(f"inputs[{index}].name", f"{tensor.name!r} is given twice")
        found[tensor.name] = index
    if INPUT not in found:
        raise InvalidArgument("inputs", f"holds no tensor named {INPUT!r}")
    return found[INPUT], found.get(TARGETS)


def _targets(
    request: oip.ModelInferRequest, parameters: ExplainParameters, index: int | None
) -> tuple[list[int], str]:
    """The classes to explain, and the field they came from."""
    if index is not None:
        field = f"inputs[{index}]"
        if parameters.targets is not None:
            raise InvalidTarget(
                field, f"targets given both as an input and as parameters.{TARGETS_PARAM}"
            )
        return _targets_tensor(request, index), field
    field = f"parameters.{TARGETS_PARAM}"
    if parameters.targets is None:
        return [], field
    return parameters.targets, field


def _targets_tensor(request: oip.ModelInferRequest, index: int) -> list[int]:
    raw = oip_tensors.read_input(request, index)
    field = f"inputs[{index}]"
    if raw.dtype not in TARGET_DTYPES:
        raise InvalidTarget(f"{field}.datatype", f"targets are {' or '.join(TARGET_DTYPES)}")
    if len(raw.shape) != 1:
        raise InvalidTarget(f"{field}.shape", f"{list(raw.shape)}: targets are [N] or [1]")
    return [int(t) for t in raw.decode(field)]


def _requested(request: oip.ModelInferRequest, offered: Sequence[str]) -> tuple[str, ...]:
    """The outputs to return: those asked for, each one this call can give; else all."""
    names: list[str] = []
    for index, output in enumerate(request.outputs):
        field = f"outputs[{index}].name"
        if output.name not in offered:
            explains = output.name in EXPLAIN_OUTPUTS
            why = f" (only with parameters.{METHOD_PARAM})" if explains else ""
            raise InvalidArgument(
                field, f"unknown output {output.name!r}{why}; this call's are {list(offered)}"
            )
        if output.name in names:
            raise InvalidArgument(field, f"{output.name!r} is asked for twice")
        names.append(output.name)
    return tuple(names) or tuple(offered)


# -- responses ---------------------------------------------------------------------------------


def prediction_response(
    request: oip.ModelInferRequest, call: InferCall, prediction: dp.Prediction
) -> oip.ModelInferResponse:
    arrays: dict[str, npt.NDArray[Any]] = {
        OUTPUT: prediction.outputs,
        PREDICTED: prediction.predicted,
    }
    return _response(request, call, prediction.model, prediction.model_version, arrays, {})


def explanation_response(
    request: oip.ModelInferRequest, call: InferCall, explained: dp.Explained
) -> oip.ModelInferResponse:
    explanation = explained.explanation
    quality = explanation.quality
    arrays: dict[str, npt.NDArray[Any]] = {
        OUTPUT: explanation.outputs,
        PREDICTED: explanation.outputs.argmax(1).astype(np.int64),
        ATTRIBUTIONS: explanation.attributions,
        TARGETS: explanation.targets,
    }
    per_row = {
        COMPLETENESS: quality.completeness_error,
        RELATIVE_COMPLETENESS: quality.relative_completeness_error,
        LOCAL_FIDELITY: quality.local_fidelity,
    }
    arrays.update({k: np.asarray(v, np.float64) for k, v in per_row.items() if len(v)})
    parameters: dict[str, Scalar] = {
        "explanation_id": explanation.explanation_id,
        METHOD_PARAM: explanation.method,
        "model_evaluations": quality.model_evaluations,
    }
    if quality.seed is not None:
        parameters["seed"] = quality.seed
    if quality.baseline_digest:
        parameters["baseline_digest"] = quality.baseline_digest
    if quality.stopped_by:
        parameters.update(partial=True, stopped_by=quality.stopped_by)
    if explained.job_id:
        parameters["job_id"] = explained.job_id
    return _response(
        request, call, explanation.model, explanation.model_version, arrays, parameters
    )


def _response(
    request: oip.ModelInferRequest,
    call: InferCall,
    model: str,
    version: str,
    arrays: Mapping[str, npt.NDArray[Any]],
    parameters: Mapping[str, Scalar],
) -> oip.ModelInferResponse:
    response = oip.ModelInferResponse(model_name=model, model_version=version, id=request.id)
    for name in call.outputs:
        if name in arrays:  # a quality output the method does not report is left out
            oip_tensors.add_output(response, name, arrays[name], raw=call.raw)
    for key, value in parameters.items():
        oip_parameters.set_parameter(response.parameters[key], value)
    return response


# -- metadata ----------------------------------------------------------------------------------


def model_metadata(
    description: dp.ModelDescription, version_asked: str
) -> oip.ModelMetadataResponse:
    """As Triton answers: the version asked for, or every version when none was."""
    tensor = oip.ModelMetadataResponse.TensorMetadata
    shape = [-1, *description.input_shape]
    return oip.ModelMetadataResponse(
        name=description.name,
        versions=[description.version] if version_asked else description.versions,
        platform=PLATFORMS.get(description.format, description.format),
        inputs=[tensor(name=INPUT, datatype=description.input_dtype, shape=shape)],
        outputs=[
            tensor(name=OUTPUT, datatype="FP32", shape=[-1, description.classes]),
            tensor(name=PREDICTED, datatype="INT64", shape=[-1]),
        ],
    )


def server_metadata(version: str) -> oip.ServerMetadataResponse:
    return oip.ServerMetadataResponse(name=SERVER_NAME, version=version, extensions=EXTENSIONS)
