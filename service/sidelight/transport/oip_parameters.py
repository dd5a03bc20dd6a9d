"""The request and response parameters of ModelInfer (InferParameter: bool, int64, double,
string or uint64), as Sidelight reads and writes them; see sidelight.transport.oip_codec."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidelight.errors import InvalidArgument, InvalidParams, InvalidTarget
from sidelight.oip import grpc_service_pb2 as oip

METHOD_PARAM = "explain_method"
TARGETS_PARAM = "explain_targets"
PARAMS_PARAM = "explain_params"
PARAM_PREFIX = PARAMS_PARAM + "."
SUBJECT_PARAM = "subject_id"
KNOWN_PARAMS = (METHOD_PARAM, TARGETS_PARAM, PARAMS_PARAM, PARAM_PREFIX + "<name>", SUBJECT_PARAM)
OURS = "explain"  # the prefix of every explanation parameter

Scalar = bool | int | float | str


@dataclass(frozen=True)
class ExplainParameters:
    """What the request parameters ask of an explanation."""

    method: str | None
    targets: list[int] | None  # explain_targets
    params: dict[str, Any]
    subject_id: str


def read(parameters: Mapping[str, oip.InferParameter]) -> ExplainParameters:
    """The parameters Sidelight reads; INVALID_ARGUMENT naming the first one at fault."""
    method = targets = None
    params: dict[str, Any] = {}
    typed: dict[str, Scalar] = {}
    subject_id = ""
    for name, parameter in parameters.items():
        field = f"parameters.{name}"
        if name == METHOD_PARAM:
            method = _string(field, parameter)
        elif name == TARGETS_PARAM:
            targets = _targets(field, parameter)
        elif name == PARAMS_PARAM:
            params = _json_object(field, _string(field, parameter))
        elif name.startswith(PARAM_PREFIX) and len(name) > len(PARAM_PREFIX):
            typed[name.removeprefix(PARAM_PREFIX)] = _scalar(field, parameter)
        elif name == SUBJECT_PARAM:
            subject_id = _string(field, parameter)
        elif name.startswith(OURS):
            raise InvalidArgument(field, f"unknown parameter; Sidelight reads {KNOWN_PARAMS}")
    for key, value in typed.items():
        if key in params:
            raise InvalidParams(
                f"parameters.{PARAM_PREFIX}{key}",
                f"given both in {PARAMS_PARAM} and as a parameter of its own: give it once",
            )
        params[key] = value
    return ExplainParameters(method, targets, params, subject_id)


def _value(parameter: oip.InferParameter) -> Scalar | None:
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        return None
    value: Scalar = getattr(parameter, which)
    return value


def _string(field: str, parameter: oip.InferParameter) -> str:
    value = _value(parameter)
    if not isinstance(value, str):
        raise InvalidArgument(field, f"must be a string (string_param), not {value!r}")
    return value


def _scalar(field: str, parameter: oip.InferParameter) -> Scalar:
    value = _value(parameter)
    if value is None:
        raise InvalidParams(field, "holds no value")
    return value


def _json_object(field: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParams(field, f"is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidParams(field, f"must be a JSON object of params, not {text!r}")
    return value


def _targets(field: str, parameter: oip.InferParameter) -> list[int]:
    value = _value(parameter)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidTarget(field, f"is not JSON: {exc}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(_is_int(v) for v in value):
        return [int(v) for v in value]
    raise InvalidTarget(field, f"a class (int64) or a JSON list of classes, not {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def set_parameter(parameter: oip.InferParameter, value: Scalar) -> None:
    """A response parameter, in the oneof field of its type."""
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value
