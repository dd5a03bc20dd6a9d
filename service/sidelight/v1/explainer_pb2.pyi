from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
    EXPIRED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
EXPIRED: JobState

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "model_version", "inputs", "method", "targets", "params", "request_id", "subject_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    inputs: Tensor
    method: str
    targets: _containers.RepeatedScalarFieldContainer[int]
    params: _struct_pb2.Struct
    request_id: str
    subject_id: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., method: _Optional[str] = ..., targets: _Optional[_Iterable[int]] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., subject_id: _Optional[str] = ...) -> None: ...

class Quality(_message.Message):
    __slots__ = ("completeness_error", "relative_completeness_error", "model_evaluations", "seed", "baseline_digest", "partial", "stopped_by", "local_fidelity", "faithfulness")
    COMPLETENESS_ERROR_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_COMPLETENESS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BASELINE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIDELITY_FIELD_NUMBER: _ClassVar[int]
    FAITHFULNESS_FIELD_NUMBER: _ClassVar[int]
    completeness_error: _containers.RepeatedScalarFieldContainer[float]
    relative_completeness_error: _containers.RepeatedScalarFieldContainer[float]
    model_evaluations: int
    seed: int
    baseline_digest: str
    partial: bool
    stopped_by: str
    local_fidelity: _containers.RepeatedScalarFieldContainer[float]
    faithfulness: Faithfulness
    def __init__(self, completeness_error: _Optional[_Iterable[float]] = ..., relative_completeness_error: _Optional[_Iterable[float]] = ..., model_evaluations: _Optional[int] = ..., seed: _Optional[int] = ..., baseline_digest: _Optional[str] = ..., partial: _Optional[bool] = ..., stopped_by: _Optional[str] = ..., local_fidelity: _Optional[_Iterable[float]] = ..., faithfulness: _Optional[_Union[Faithfulness, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("explanation_id", "outputs", "targets", "attributions", "quality", "model", "model_version", "method", "request_id")
    EXPLANATION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    explanation_id: str
    outputs: Tensor
    targets: _containers.RepeatedScalarFieldContainer[int]
    attributions: Tensor
    quality: Quality
    model: str
    model_version: str
    method: str
    request_id: str
    def __init__(self, explanation_id: _Optional[str] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Iterable[int]] = ..., attributions: _Optional[_Union[Tensor, _Mapping]] = ..., quality: _Optional[_Union[Quality, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., method: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "model_version", "inputs", "request_id", "subject_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    inputs: Tensor
    request_id: str
    subject_id: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., request_id: _Optional[str] = ..., subject_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("outputs", "predicted", "model", "model_version", "request_id")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    outputs: Tensor
    predicted: _containers.RepeatedScalarFieldContainer[int]
    model: str
    model_version: str
    request_id: str
    def __init__(self, outputs: _Optional[_Union[Tensor, _Mapping]] = ..., predicted: _Optional[_Iterable[int]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("shape", "dtype", "min", "max", "feature_names")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    min: float
    max: float
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., feature_names: _Optional[_Iterable[str]] = ...) -> None: ...

class MethodInfo(_message.Message):
    __slots__ = ("name", "mode", "attribution_shape", "params_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    attribution_shape: str
    params_schema: str
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ..., attribution_shape: _Optional[str] = ..., params_schema: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "versions", "latest_version", "task", "input", "labels", "output_kind", "methods", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    latest_version: str
    task: str
    input: InputSpec
    labels: _containers.RepeatedScalarFieldContainer[str]
    output_kind: str
    methods: _containers.RepeatedCompositeFieldContainer[MethodInfo]
    description: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., latest_version: _Optional[str] = ..., task: _Optional[str] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., output_kind: _Optional[str] = ..., methods: _Optional[_Iterable[_Union[MethodInfo, _Mapping]]] = ..., description: _Optional[str] = ...) -> None: ...

class Faithfulness(_message.Message):
    __slots__ = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc", "infidelity", "max_sensitivity", "reference", "steps")
    DELETION_AUC_FIELD_NUMBER: _ClassVar[int]
    INSERTION_AUC_FIELD_NUMBER: _ClassVar[int]
    RANDOM_DELETION_AUC_FIELD_NUMBER: _ClassVar[int]
    RANDOM_INSERTION_AUC_FIELD_NUMBER: _ClassVar[int]
    INFIDELITY_FIELD_NUMBER: _ClassVar[int]
    MAX_SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    deletion_auc: _containers.RepeatedScalarFieldContainer[float]
    insertion_auc: _containers.RepeatedScalarFieldContainer[float]
    random_deletion_auc: _containers.RepeatedScalarFieldContainer[float]
    random_insertion_auc: _containers.RepeatedScalarFieldContainer[float]
    infidelity: _containers.RepeatedScalarFieldContainer[float]
    max_sensitivity: _containers.RepeatedScalarFieldContainer[float]
    reference: str
    steps: int
    def __init__(self, deletion_auc: _Optional[_Iterable[float]] = ..., insertion_auc: _Optional[_Iterable[float]] = ..., random_deletion_auc: _Optional[_Iterable[float]] = ..., random_insertion_auc: _Optional[_Iterable[float]] = ..., infidelity: _Optional[_Iterable[float]] = ..., max_sensitivity: _Optional[_Iterable[float]] = ..., reference: _Optional[str] = ..., steps: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "model_version", "inputs", "attributions", "targets", "metrics", "method", "params", "steps", "reference", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    inputs: Tensor
    attributions: Tensor
    targets: _containers.RepeatedScalarFieldContainer[int]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    method: str
    params: _struct_pb2.Struct
    steps: int
    reference: str
    request_id: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., attributions: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Iterable[int]] = ..., metrics: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., steps: _Optional[int] = ..., reference: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SanityCheckRequest(_message.Message):
    __slots__ = ("model", "model_version", "inputs", "methods", "mode", "seed", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    inputs: Tensor
    methods: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    seed: int
    request_id: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., methods: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("faithfulness", "targets", "model_evaluations", "request_id")
    FAITHFULNESS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MODEL_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    faithfulness: Faithfulness
    targets: _containers.RepeatedScalarFieldContainer[int]
    model_evaluations: int
    request_id: str
    def __init__(self, faithfulness: _Optional[_Union[Faithfulness, _Mapping]] = ..., targets: _Optional[_Iterable[int]] = ..., model_evaluations: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("fraction", "model_evaluations")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    model_evaluations: int
    def __init__(self, fraction: _Optional[float] = ..., model_evaluations: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "progress", "error", "result", "request_id", "model", "model_version", "method", "deliveries", "submitted_at", "started_at", "finished_at", "partial", "sanity_report_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SANITY_REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    progress: JobProgress
    error: str
    result: ExplainResponse
    request_id: str
    model: str
    model_version: str
    method: str
    deliveries: int
    submitted_at: float
    started_at: float
    finished_at: float
    partial: bool
    sanity_report_json: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., error: _Optional[str] = ..., result: _Optional[_Union[ExplainResponse, _Mapping]] = ..., request_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., method: _Optional[str] = ..., deliveries: _Optional[int] = ..., submitted_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., partial: _Optional[bool] = ..., sanity_report_json: _Optional[str] = ...) -> None: ...

class GetAuditRecordRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("record_id", "seq", "content_json", "prev_hash", "hash", "attributions", "has_encrypted_input")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_ENCRYPTED_INPUT_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    seq: int
    content_json: str
    prev_hash: bytes
    hash: bytes
    attributions: Tensor
    has_encrypted_input: bool
    def __init__(self, record_id: _Optional[str] = ..., seq: _Optional[int] = ..., content_json: _Optional[str] = ..., prev_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ..., attributions: _Optional[_Union[Tensor, _Mapping]] = ..., has_encrypted_input: _Optional[bool] = ...) -> None: ...
