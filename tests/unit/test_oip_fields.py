"""The data plane's field names, renamed to the Open Inference Protocol's at its boundary."""

from __future__ import annotations

import grpc
import pytest
from sidelight.errors import (
    InvalidParams,
    InvalidTensor,
    ModelNotFound,
    Overloaded,
    SubjectErased,
)
from sidelight.transport.oip_fields import InferFields, lookup_field, renaming
from sidelight.transport.status import status_for

RAW = InferFields(input_index=0, raw=True, targets="parameters.explain_targets")
TYPED = InferFields(input_index=1, raw=False, targets="inputs[0]")


@pytest.mark.parametrize(
    ("fields", "field", "renamed"),
    [
        (RAW, "inputs.shape", "inputs[0].shape"),
        (TYPED, "inputs.shape", "inputs[1].shape"),
        (RAW, "inputs.dtype", "inputs[0].datatype"),
        (RAW, "inputs.data", "raw_input_contents[0]"),
        (TYPED, "inputs.data", "inputs[1].contents"),
        (RAW, "targets", "parameters.explain_targets"),
        (RAW, "targets[2]", "parameters.explain_targets[2]"),
        (TYPED, "targets[2]", "inputs[0][2]"),
        (RAW, "params", "parameters.explain_params"),
        (RAW, "params.n_steps", "parameters.explain_params.n_steps"),
        (RAW, "method", "parameters.explain_method"),
        (RAW, "model", "model_name"),
        (RAW, "model_version", "model_version"),
        (RAW, "request_id", "id"),
        (RAW, "subject_id", "parameters.subject_id"),
    ],
)
def test_model_infer_fields(fields: InferFields, field: str, renamed: str) -> None:
    assert fields.rename(field) == renamed


def test_metadata_calls_name_the_model_and_version_otherwise() -> None:
    assert lookup_field("model") == "name"
    assert lookup_field("model_version") == "version"


def test_a_renamed_error_keeps_its_class_its_problem_and_its_status_code() -> None:
    error = InvalidParams("params.n_steps", "must be >= 2")
    with pytest.raises(InvalidParams) as raised, renaming(RAW.rename):
        raise error
    renamed = raised.value
    assert str(renamed) == "parameters.explain_params.n_steps: must be >= 2"
    assert (renamed.field, renamed.problem) == ("parameters.explain_params.n_steps", "must be >= 2")
    assert renamed.__cause__ is error and str(error) == "params.n_steps: must be >= 2"
    assert status_for(renamed) == (grpc.StatusCode.INVALID_ARGUMENT, str(renamed))


def test_errors_with_their_own_constructors_are_renamed_too() -> None:
    with pytest.raises(SubjectErased) as raised, renaming(lambda field: "parameters." + field):
        raise SubjectErased("person-42")
    assert raised.value.subject_id == "person-42"
    assert str(raised.value).startswith("parameters.subject_id: no key for subject")
    with pytest.raises(ModelNotFound) as missing, renaming(lookup_field):
        raise ModelNotFound("model", "no model 'x'")
    assert status_for(missing.value) == (grpc.StatusCode.NOT_FOUND, "name: no model 'x'")


def test_errors_named_as_the_protocol_names_them_or_about_no_field_pass_unchanged() -> None:
    error = InvalidTensor("model_version", "'v1' is not a version number")
    with pytest.raises(InvalidTensor) as raised, renaming(RAW.rename):
        raise error
    assert raised.value is error
    full = Overloaded("the queue is full")
    with pytest.raises(Overloaded) as overloaded, renaming(RAW.rename):
        raise full
    assert overloaded.value is full
