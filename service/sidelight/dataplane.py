"""The use cases, transport-neutral: list and describe models, predict, explain, and the jobs'
submit, get, watch and cancel.

The gRPC servicer converts messages to these dataclasses and back; nothing here knows protobuf.
Validation happens here, before a request is queued, so a bad request never costs device time
and never reaches a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from sidelight.audit import recording
from sidelight.audit.log import AuditLog
from sidelight.audit.record import AuditRecord
from sidelight.audit.store import StoredRecord
from sidelight.batching.scheduler import Group, Scheduler
from sidelight.blocking import BlockingCalls
from sidelight.errors import (
    DeadlineExceeded,
    InvalidArgument,
    InvalidParams,
    InvalidTensor,
    JobCancelled,
    JobFailed,
    SidelightError,
    Unavailable,
)
from sidelight.explanations import (
    BatchResult,
    Explanation,
    explanation_of,
    new_explanation_id,
    run_explain,
    run_predict,
    split_result,
)
from sidelight.jobs.queue import JobQueue
from sidelight.jobs.spec import JobKind, JobSpec, JobState, JobStatus
from sidelight.methods.base import Mode, Params, SeededParams
from sidelight.methods.catalog import METHODS, AnyMethod, method_for, parse_params
from sidelight.methods.checked import Stopped, checked
from sidelight.methods.chunking import Measure
from sidelight.models.model import Model, PrivateModels
from sidelight.models.registry import ModelRegistry, ModelVersion
from sidelight.models.remote.module import remote_client
from sidelight.quality.curves import Reference
from sidelight.quality.evaluate import DEFAULT_METRICS, METRICS, FaithfulnessScores, evaluate
from sidelight.quality.sampler import FaithfulnessSampler
from sidelight.tensors import RawTensor
from sidelight.validation import (
    check_baseline,
    check_length,
    check_lengths,
    finite_params,
    parse_targets,
    validate_inputs,
)

SEED_BITS = 63
# Batching groups (model, version, method, params, input shape) kept for reuse.
MAX_GROUPS = 1024
PREDICT = "predict"
# Params of a job as a whole, taken out before the method's own params are validated.
DEADLINE_PARAM = "deadline_seconds"
BUDGET_PARAM = "max_evaluations"
EVALUATE_PARAM = "evaluate"  # faithfulness figures to compute for the job's result
# WatchJob polls the job (a queue has no push for progress; a poll reads a few fields): soon
# after a change, then less and less often while nothing moves, so a short job's end is seen
# within milliseconds and a long job costs a few reads a second.
WATCH_POLL_MIN_S = 0.005
WATCH_POLL_MAX_S = 0.25
SANITY_METHOD = "sanity"  # a sanity-check job's `method`, as GetJob shows it
SANITY_MODES = ("cascading", "independent")
T = TypeVar("T")


@dataclass(frozen=True)
class PredictRequest:
    model: str
    inputs: RawTensor
    model_version: str = ""
    request_id: str = ""
    deadline: float | None = None  # time.monotonic() deadline
    subject_id: str = ""  # the person the decision is about (audit log)
    caller: str = ""  # who asked: the authenticated peer, or the caller header (audit log)


@dataclass(frozen=True)
class ExplainRequest:
    model: str
    inputs: RawTensor
    method: str
    model_version: str = ""
    targets: Sequence[int] = ()
    params: Mapping[str, Any] | None = None
    request_id: str = ""
    deadline: float | None = None
    subject_id: str = ""
    caller: str = ""


@dataclass(frozen=True)
class EvaluateRequest:
    model: str
    inputs: RawTensor
    attributions: RawTensor
    model_version: str = ""
    targets: Sequence[int] = ()
    metrics: Sequence[str] = ()
    method: str = ""
    params: Mapping[str, Any] | None = None
    steps: int = 0
    reference: str = ""
    request_id: str = ""
    deadline: float | None = None  # time.monotonic() deadline


@dataclass(frozen=True)
class SanityCheckRequest:
    model: str
    inputs: RawTensor
    methods: Sequence[str] = ()
    model_version: str = ""
    mode: str = ""
    seed: int = 0
    request_id: str = ""


@dataclass(frozen=True)
class Evaluation:
    scores: FaithfulnessScores
    targets: npt.NDArray[np.int64]
    request_id: str


@dataclass(frozen=True)
class Prediction:
    model: str
    model_version: str
    outputs: npt.NDArray[np.float32]  # N x classes, probabilities for classifiers
    predicted: npt.NDArray[np.int64]
    request_id: str


@dataclass(frozen=True)
class Explained:
    """An explanation computed within the call, by whichever path its method takes."""

    explanation: Explanation
    job_id: str = ""  # the job that computed it, for a perturbation method


@dataclass(frozen=True)
class ModelDescription:
    """One version of a model, as a protocol's metadata call describes it."""

    name: str
    version: str  # the one described: the latest when none was named
    versions: list[str]
    format: str  # sidelight.models.model.ModelFormat's value
    input_shape: list[int]  # one instance, without the batch dimension
    input_dtype: str
    classes: int


@dataclass(frozen=True)
class MethodSummary:
    name: str
    mode: str
    attribution_shape: str
    params_schema: str


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: list[str]
    latest_version: str
    task: str
    input_shape: list[int]
    input_dtype: str
    input_range: tuple[float, float] | None
    feature_names: list[str]
    labels: list[str]
    output_kind: str
    methods: list[MethodSummary]
    description: str


class DataPlane:
    def __init__(
        self,
        registry: ModelRegistry,
        scheduler: Scheduler,
        *,
        jobs: JobQueue | None = None,
        sampler: FaithfulnessSampler | None = None,
        audit: AuditLog | None = None,
        max_instances_per_request: int = 1024,
        max_evaluations_per_request: int = 1 << 18,
        max_evaluations_per_job: int = 1 << 28,
        job_calls: BlockingCalls | None = None,
        audit_calls: BlockingCalls | None = None,
    ) -> None:
        self._registry = registry
        # The job queue's and the audit store's blocking calls, each on threads of its own: a
        # hung Redis or database holds its own threads, never the ones other calls need.
        self._job_calls = job_calls or BlockingCalls("job queue", threads=8, wait_s=5.0)
        self._audit_calls = audit_calls or BlockingCalls("audit store", threads=4, wait_s=5.0)
        self._scheduler = scheduler
        self._jobs = jobs
        self._sampler = sampler
        self._audit = audit
        self._evaluations = asyncio.Semaphore(1)
        self._own = PrivateModels()  # Evaluate's copies, never the executor's modules
        self._max_instances = max_instances_per_request
        self._max_evaluations = max_evaluations_per_request
        self._max_job_evaluations = max_evaluations_per_job
        # Groups are made on first use and kept for the next requests alike. The keys come from
        # what clients send (params, input shapes), so the caches are bounded: an evicted group
        # is made again when needed (requests queued under it are unaffected).
        self._predict_group = functools.lru_cache(maxsize=MAX_GROUPS)(self._new_predict_group)
        self._explain_group = functools.lru_cache(maxsize=MAX_GROUPS)(self._new_explain_group)

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    def close(self) -> None:
        self._job_calls.close()
        self._audit_calls.close()

    def list_models(self) -> list[ModelSummary]:
        summaries = []
        for name in self._registry.names():
            entry = self._registry.get(name)
            config = entry.config
            summaries.append(
                ModelSummary(
                    name=name,
                    versions=self._registry.versions(name),
                    latest_version=entry.version,
                    task=config.task.value,
                    input_shape=list(config.input.shape),
                    input_dtype=config.input.dtype,
                    input_range=config.input.range,
                    feature_names=list(config.input.feature_names or []),
                    labels=list(config.labels),
                    output_kind=config.output.value,
                    methods=[_method_summary(METHODS[m]) for m in config.methods],
                    description=config.description,
                )
            )
        return summaries

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model can serve now: False for a model that failed to load (it is
        known, with its error) and for a remote model whose endpoint's last probe or call
        failed; ModelNotFound / VersionNotFound for what the repository does not hold."""
        check_length("model", name)
        check_length("model_version", version)
        if name in self._registry.unavailable:
            return False
        entry = self._registry.get(name, version)
        clients = (remote_client(replica) for replica in entry.replicas)
        return all(client.stats.up is not False for client in clients if client is not None)

    def describe_model(self, name: str, version: str = "") -> ModelDescription:
        """ModelNotFound / VersionNotFound for what is not loaded."""
        check_length("model", name)
        check_length("model_version", version)
        entry = self._registry.get(name, version)
        return ModelDescription(
            name=entry.name,
            version=entry.version,
            versions=self._registry.versions(entry.name),
            format=entry.primary.format.value,
            input_shape=list(entry.config.input.shape),
            input_dtype=entry.config.input.dtype,
            classes=entry.primary.num_classes,
        )

    async def predict(self, request: PredictRequest) -> Prediction:
        check_lengths(request)
        entry = self._registry.get(request.model, request.model_version)
        inputs = validate_inputs(entry, request.inputs, self._max_instances)
        group = self._predict_group(entry.name, entry.version, tuple(inputs.shape[1:]))
        no_targets = torch.full((inputs.shape[0],), -1, dtype=torch.int64)
        result: BatchResult = await self._scheduler.submit(
            group, inputs, no_targets, 0, request.deadline
        )
        if self._audit is not None and self._audit.settings.record_predictions:
            record = await self._audit_record(
                self._audit.prediction,
                entry.primary,
                request.inputs,
                result.outputs,
                result.targets,
                request_id=request.request_id,
                caller=request.caller,
                subject_id=request.subject_id,
            )
            await self._audit.write(record)
        return Prediction(
            entry.name, entry.version, result.outputs, result.targets, request.request_id
        )

    async def explain(self, request: ExplainRequest) -> Explanation:
        check_lengths(request)
        finite_params(request.params or {})
        entry = self._registry.get(request.model, request.model_version)
        method = method_for(entry.primary, request.method)
        if method.mode is Mode.ASYNC:
            raise InvalidArgument(
                "method", f"{method.name} runs as a job: submit it with SubmitJob"
            )
        params = parse_params(method, request.params or {})
        method.check_params(entry.primary, params)
        check_baseline(entry, params)
        inputs = validate_inputs(entry, request.inputs, self._max_instances)
        _check_cost(method, params, inputs.shape[0], self._max_evaluations, "request")
        targets = parse_targets(request.targets, inputs.shape[0], entry.primary.num_classes)
        seed = None
        if isinstance(params, SeededParams):
            seed = _seed(params)
            params = params.model_copy(update={"seed": None})  # the seed rides per request
        group = self._explain_group(entry, method, params, tuple(inputs.shape[1:]))
        result: BatchResult = await self._scheduler.submit(
            group, inputs, targets, seed or 0, request.deadline
        )
        explanation = explanation_of(
            entry.name,
            entry.version,
            method,
            params,
            entry.primary,
            result,
            seed=seed,
            request_id=request.request_id,
            instances=inputs.shape[0],
        )
        if self._audit is not None:
            # Recorded (durably) before it is returned; strict mode: not returned otherwise.
            record = await self._audit_record(
                self._audit.explanation,
                explanation,
                entry.primary,
                request.inputs,
                params.model_dump(mode="json"),
                caller=request.caller,
                subject_id=request.subject_id,
                reasons=result.reasons,
            )
            await self._audit.write(record)
        if self._sampler is not None:
            # A random draw; when kept, scored later on the sampler's thread (after the record,
            # which the sampler's own record then follows).
            self._sampler.offer(
                entry.primary,
                method.name,
                inputs,
                explanation.attributions,
                explanation.targets,
                explanation.explanation_id,
            )
        return explanation

    async def _audit_record(
        self, build: Callable[..., AuditRecord], *args: Any, **kw: Any
    ) -> AuditRecord:
        """Built here; on a thread when the input is to be encrypted (its subject's key may
        have to be read from, or created in, the store)."""
        assert self._audit is not None
        if self._audit.settings.store_inputs and kw.get("subject_id"):
            return await self._audit_calls.run(build, *args, **kw)
        return build(*args, **kw)

    async def get_audit_record(self, record_id: str) -> StoredRecord:
        if self._audit is None:
            raise Unavailable("this server keeps no audit log (--audit off)")
        record_id = _identifier(record_id, "record_id", "a record id")
        return await self._audit_calls.run(self._audit.store.get, record_id)

    async def evaluate(self, request: EvaluateRequest) -> Evaluation:
        """Faithfulness of given attributions; validated here, computed on a thread (one at a
        time: an on-demand audit, not a hot path)."""
        check_lengths(request)
        finite_params(request.params or {})
        entry = self._registry.get(request.model, request.model_version)
        model = entry.primary
        inputs = validate_inputs(entry, request.inputs, self._max_instances)
        attributions = _attributions(request.attributions, inputs)
        metrics = _metrics(request.metrics)
        steps = request.steps or 16
        if not 1 <= steps <= 256:
            raise InvalidArgument("steps", f"must be in [1, 256], not {steps}")
        reference = _reference(request.reference, inputs)
        method = params = None
        if "max_sensitivity" in metrics:
            if not request.method:
                raise InvalidArgument(
                    "method", "max_sensitivity re-runs the method: name the method that made them"
                )
            method = method_for(model, request.method)
            if method.mode is Mode.ASYNC:
                raise InvalidArgument(
                    "method", f"max_sensitivity re-runs {method.name} many times: not for jobs"
                )
            params = parse_params(method, request.params or {})
            method.check_params(model, params)
        requested = parse_targets(request.targets, inputs.shape[0], model.num_classes)
        # Checked before each model call on the thread: a cancelled call (the client went
        # away, or gRPC's deadline) and a passed deadline stop the work between two calls.
        cancelled = threading.Event()

        def check(_evaluations: int, _rows: int) -> str | None:
            if cancelled.is_set():
                return "cancelled"
            if request.deadline is not None and time.monotonic() >= request.deadline:
                return "deadline"
            return None

        async with self._evaluations:
            stoppable = checked(self._own(model), check)
            work = asyncio.ensure_future(
                asyncio.to_thread(
                    _score,
                    stoppable,
                    inputs,
                    attributions,
                    requested,
                    metrics,
                    steps,
                    reference,
                    method,
                    params,
                )
            )
            try:
                targets, scores = await _until_stopped(work, cancelled)
            except Stopped as stopped:
                raise DeadlineExceeded(
                    f"Evaluate: the call's deadline passed after {stopped.evaluations} model "
                    "evaluations"
                ) from None
        return Evaluation(scores, targets.numpy(), request.request_id)

    # -- jobs ------------------------------------------------------------------------------

    def _queue(self) -> JobQueue:
        if self._jobs is None:
            raise Unavailable("this server takes no jobs (started without a job queue)")
        return self._jobs

    async def submit_job(self, request: ExplainRequest) -> JobStatus:
        """Validate as Explain does, then queue. The seed and the model version are resolved
        now, so every delivery of the job computes the same thing."""
        check_lengths(request)
        queue = self._queue()
        finite_params(request.params or {})
        entry = self._registry.get(request.model, request.model_version)
        method = method_for(entry.primary, request.method)
        raw = dict(request.params or {})
        deadline_s = _positive_number(raw.pop(DEADLINE_PARAM, None), DEADLINE_PARAM)
        budget = _positive_int(raw.pop(BUDGET_PARAM, None), BUDGET_PARAM)
        evaluate = _job_metrics(raw.pop(EVALUATE_PARAM, None))
        params = parse_params(method, raw)
        method.check_params(entry.primary, params)
        check_baseline(entry, params)
        inputs = validate_inputs(entry, request.inputs, self._max_instances)
        parse_targets(request.targets, inputs.shape[0], entry.primary.num_classes)
        if budget is not None and budget > self._max_job_evaluations:
            raise InvalidParams(
                f"params.{BUDGET_PARAM}",
                f"{budget} is over the limit of {self._max_job_evaluations} per job",
            )
        if method.mode is Mode.SYNC:  # a gradient method's cost is known before it runs
            _check_cost(method, params, inputs.shape[0], self._max_job_evaluations, "job")
            if budget is not None:
                _budget_covers(method, params, inputs.shape[0], budget)
        if isinstance(params, SeededParams):
            params = params.model_copy(update={"seed": _seed(params)})
        now = time.time()
        spec = JobSpec(
            job_id=new_explanation_id(),
            request_id=request.request_id,
            model=entry.name,
            model_version=entry.version,
            method=method.name,
            inputs=request.inputs,
            targets=tuple(int(t) for t in request.targets),
            params=params.model_dump(mode="json", exclude_defaults=True),
            deadline=None if deadline_s is None else now + deadline_s,
            # Every job is bounded: one that names no budget stops at the limit (partial).
            max_evaluations=budget or self._max_job_evaluations,
            submitted_at=now,
            digest=_request_digest(request),
            evaluate=evaluate,
            subject_id=request.subject_id,
            caller=request.caller,
        )
        return await self._job_calls.run(queue.submit, spec)

    async def submit_sanity_check(self, request: SanityCheckRequest) -> JobStatus:
        """Queue the randomization checks of `sidelight sanity` for these inputs."""
        check_lengths(request)
        queue = self._queue()
        entry = self._registry.get(request.model, request.model_version)
        model = entry.primary
        offered = [m for m in model.config.methods if METHODS[m].mode is Mode.SYNC]
        for index, name in enumerate(request.methods):
            method = method_for(model, name, field=f"methods[{index}]")
            if method.mode is not Mode.SYNC:
                raise InvalidArgument(
                    f"methods[{index}]", f"{name} is sampled: the checks take {offered}"
                )
        mode = request.mode or "cascading"
        if mode not in SANITY_MODES:
            raise InvalidArgument("mode", f"unknown {mode!r}; one of {list(SANITY_MODES)}")
        if not 0 <= request.seed < 2**SEED_BITS:
            raise InvalidArgument("seed", f"must be in [0, 2^{SEED_BITS})")
        inputs = validate_inputs(entry, request.inputs, self._max_instances)
        methods = list(dict.fromkeys(request.methods)) or offered
        params = {"methods": methods, "mode": mode, "seed": request.seed}
        digest = hashlib.sha256(
            json.dumps({"model": entry.name, "version": entry.version, **params}).encode()
            + request.inputs.data
        ).hexdigest()
        spec = JobSpec(
            job_id=new_explanation_id(),
            request_id=request.request_id,
            model=entry.name,
            model_version=entry.version,
            method=SANITY_METHOD,
            inputs=request.inputs,
            params=params,
            submitted_at=time.time(),
            digest=digest,
            kind=JobKind.SANITY,
        )
        del inputs  # validated only: the worker decodes the spec's bytes
        return await self._job_calls.run(queue.submit, spec)

    async def explain_within_call(self, request: ExplainRequest) -> Explained:
        """Explain with any method and answer within the call, for protocols that have no jobs
        (the Open Inference Protocol): a synchronous method through the batcher; a
        perturbation method as a job, submitted, then waited for until the request's
        deadline. The job is cancelled when the wait ends early (the caller went away, or its
        deadline passed): nobody is left to read its result."""
        check_lengths(request)
        entry = self._registry.get(request.model, request.model_version)
        if method_for(entry.primary, request.method).mode is Mode.SYNC:
            return Explained(await self.explain(request))
        job = await self.submit_job(request)
        try:
            done = await self._job_end(job.job_id, request.deadline)
        except BaseException:
            await asyncio.shield(self._cancel_quietly(job.job_id))
            raise
        return Explained(_job_result(done), job.job_id)

    async def _job_end(self, job_id: str, deadline: float | None) -> JobStatus:
        """The job once it ends; DeadlineExceeded if that is after `deadline`."""
        left = None if deadline is None else deadline - time.monotonic()
        try:
            async with asyncio.timeout(left):
                async for status in self.watch_job(job_id):
                    if status.terminal:
                        return status
        except TimeoutError:
            raise DeadlineExceeded(f"job {job_id} had not ended by the call's deadline") from None
        raise AssertionError("unreachable: watch_job ends with a terminal state")

    async def _cancel_quietly(self, job_id: str) -> None:
        # The job may have ended meanwhile, or the queue be down: then nothing is to cancel.
        with contextlib.suppress(SidelightError):
            await self.cancel_job(job_id)

    async def get_job(self, job_id: str) -> JobStatus:
        return await self._job_calls.run(self._queue().status, _job_id(job_id))

    async def cancel_job(self, job_id: str) -> JobStatus:
        return await self._job_calls.run(self._queue().cancel, _job_id(job_id))

    async def watch_job(self, job_id: str) -> AsyncIterator[JobStatus]:
        """The job now, then at each change of state or progress, until it ends."""
        queue, job_id = self._queue(), _job_id(job_id)
        seen: tuple[Any, ...] | None = None
        pause = WATCH_POLL_MIN_S
        while True:
            status = await self._job_calls.run(queue.status, job_id)
            now = (status.state, status.fraction, status.evaluations, status.deliveries)
            if now != seen:
                seen = now
                pause = WATCH_POLL_MIN_S
                yield status
            if status.terminal:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, WATCH_POLL_MAX_S)

    @staticmethod
    def _new_predict_group(model: str, version: str, shape: tuple[int, ...]) -> Group:
        return Group((model, version, shape), model, version, PREDICT, run_predict, split_result)

    def _new_explain_group(
        self, entry: ModelVersion, method: AnyMethod, params: Params, shape: tuple[int, ...]
    ) -> Group:
        params_key = json.dumps(params.model_dump(mode="json"), sort_keys=True)
        key = (entry.name, entry.version, method.name, params_key, shape)
        # With an audit log, the records' top-k reasons are computed here, with the batch, on
        # the executor's thread: once per batch rather than once per request on the loop.
        top_k = self._audit.settings.top_k if self._audit is not None else None
        feature_names = tuple(entry.primary.config.input.feature_names or ())

        def run(
            model: Model,
            inputs: torch.Tensor,
            targets: torch.Tensor,
            seeds: torch.Tensor,
            max_rows: int,
            measure: Measure,
        ) -> BatchResult:
            result = run_explain(method, params, model, inputs, targets, seeds, max_rows, measure)
            if top_k is None or result.attributions is None:
                return result
            reasons = recording.summarize(result.attributions, feature_names, top_k)
            return dataclasses.replace(result, reasons=reasons)

        return Group(
            key,
            entry.name,
            entry.version,
            method.name,
            run,
            split_result,
            rows_per_instance=method.rows_per_instance(params),
        )


async def _until_stopped(work: asyncio.Future[T], cancelled: threading.Event) -> T:
    """`work`'s result. If the caller is cancelled first, `cancelled` is set and the caller
    waits on until `work` (a thread that checks the event between model calls) has ended: what
    the caller holds (Evaluate's one-at-a-time guard) is released only once nothing runs."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        cancelled.set()
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: its Stopped is expected, nobody else will read it
        raise


def _job_result(status: JobStatus) -> Explanation:
    """A finished job's explanation, or the error that says why there is none."""
    if status.state is JobState.SUCCEEDED and status.result is not None:
        return status.result
    if status.state is JobState.CANCELLED:
        raise JobCancelled(status.job_id, "cancelled (CancelJob) before it finished")
    if status.state is JobState.EXPIRED:
        raise DeadlineExceeded(f"job {status.job_id}: its deadline passed before it started")
    raise JobFailed(status.job_id, f"{status.state.value}: {status.error or 'no result'}")


def _check_cost(method: AnyMethod, params: Params, instances: int, limit: int, per: str) -> None:
    """InvalidArgument naming what sets the cost when `instances` x the method's rows per
    instance is over `limit` model evaluations: refused before anything runs."""
    rows = method.rows_per_instance(params)
    if instances * rows <= limit:
        return
    field = f"params.{method.cost_param}" if method.cost_param else "inputs.shape"
    raise InvalidArgument(
        field,
        f"{instances} instances x {rows} model evaluations each = {instances * rows}; "
        f"at most {limit} per {per}: send fewer instances"
        + (f" or lower {method.cost_param}" if method.cost_param else ""),
    )


def _method_summary(method: AnyMethod) -> MethodSummary:
    return MethodSummary(
        name=method.name,
        mode=method.mode.value,
        attribution_shape=method.shape.value,
        params_schema=json.dumps(method.params_type.model_json_schema(), sort_keys=True),
    )


def _attributions(raw: RawTensor, inputs: torch.Tensor) -> torch.Tensor:
    array = raw.decode("attributions")
    shape = tuple(inputs.shape)
    maps = (shape[0], 1, *shape[2:]) if inputs.dim() == 4 else None
    if tuple(array.shape) not in (shape, maps):
        allowed = [list(shape)] + ([list(maps)] if maps else [])
        raise InvalidTensor("attributions.shape", f"{list(array.shape)}; expected one of {allowed}")
    tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    if not bool(torch.isfinite(tensor).all()):
        raise InvalidTensor("attributions.data", "holds NaN or Inf")
    return tensor


def _metrics(
    requested: Sequence[str],
    field: str = "metrics",
    allowed: Sequence[str] = METRICS,
    error: type[InvalidArgument] = InvalidArgument,
) -> tuple[str, ...]:
    """The faithfulness figures asked for (the default ones when none), each a known name."""
    for index, name in enumerate(requested):
        if name not in allowed:
            raise error(f"{field}[{index}]", f"unknown {name!r}; one of {list(allowed)}")
    return tuple(requested) or DEFAULT_METRICS


def _job_metrics(value: Any) -> tuple[str, ...]:
    """params.evaluate of a job: true (the default figures), or a list of figure names."""
    if value is None or value is False:
        return ()
    if value is True:
        return DEFAULT_METRICS
    # Not max_sensitivity: it re-runs the method many times over.
    allowed = [m for m in METRICS if m != "max_sensitivity"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParams(
            f"params.{EVALUATE_PARAM}", f"true, or a list of {allowed}; not {value!r}"
        )
    if not value:
        return ()
    return _metrics(value, f"params.{EVALUATE_PARAM}", allowed, InvalidParams)


def _reference(name: str, inputs: torch.Tensor) -> Reference | None:
    if not name:
        return None
    try:
        reference = Reference(name)
    except ValueError:
        known = [r.value for r in Reference]
        raise InvalidArgument("reference", f"unknown {name!r}; one of {known}") from None
    if reference is Reference.BLUR and inputs.dim() != 4:
        raise InvalidArgument("reference", "blur needs images; rows take the model's baseline")
    return reference


def _score(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    requested: torch.Tensor,
    metrics: tuple[str, ...],
    steps: int,
    reference: Reference | None,
    method: AnyMethod | None,
    params: Params | None,
) -> tuple[torch.Tensor, FaithfulnessScores]:
    x = inputs.to(model.device)
    with torch.no_grad():
        predicted = model.module(x).argmax(1)
    targets = torch.where(requested.to(model.device) < 0, predicted, requested.to(model.device))
    scores = evaluate(
        model,
        x,
        attributions.to(model.device),
        targets,
        metrics,
        steps=steps,
        reference=reference,
        method=method,
        params=params,
    )
    return targets.cpu(), scores


def _seed(params: SeededParams) -> int:
    seed = params.seed if params.seed is not None else secrets.randbits(SEED_BITS)
    if not 0 <= seed < 2**SEED_BITS:
        raise InvalidParams("params.seed", f"must be in [0, 2^{SEED_BITS})")
    return seed


def _positive_number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidParams(f"params.{name}", f"must be a number of seconds > 0, not {value!r}")
    if not math.isfinite(value):
        raise InvalidParams(f"params.{name}", "must be finite")
    return float(value)


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    # A Struct carries numbers as doubles: 500.0 is 500, 500.5 is not a count.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidParams(f"params.{name}", f"must be a whole number, not {value!r}")
    if value < 1:
        raise InvalidParams(f"params.{name}", f"must be >= 1, not {int(value)}")
    return int(value)


def _budget_covers(method: AnyMethod, params: Params, instances: int, budget: int) -> None:
    """A job's budget for a method without a partial estimate (the synchronous ones: gradients,
    CAM) must cover all of its passes: a smaller one could only buy a run that ends FAILED."""
    each = method.evaluations_per_instance(params)
    if budget < each * instances:
        raise InvalidParams(
            f"params.{BUDGET_PARAM}",
            f"{budget} does not cover the {each * instances} model evaluations of {method.name} "
            f"on {instances} instances ({each} each), and it has no partial result",
        )


def _job_id(job_id: str) -> str:
    return _identifier(job_id, "job_id", "a job id")


def _identifier(value: str, field: str, what: str) -> str:
    """Ids Sidelight hands out (jobs, explanations, records): letters and digits, at most 64."""
    if not value:
        raise InvalidArgument(field, "is empty")
    check_length(field, value)
    if not value.isalnum():
        raise InvalidArgument(field, f"is not {what} (letters and digits only)")
    return value


def _request_digest(request: ExplainRequest) -> str:
    """What makes two submissions the same request (for request_id reuse)."""
    digest = hashlib.sha256()
    header = {
        "model": request.model,
        "model_version": request.model_version,
        "method": request.method,
        "targets": [int(t) for t in request.targets],
        "params": request.params or {},
        "dtype": request.inputs.dtype,
        "shape": list(request.inputs.shape),
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    digest.update(request.inputs.data)
    return digest.hexdigest()


def monotonic_deadline(seconds_left: float | None) -> float | None:
    return None if seconds_left is None else time.monotonic() + seconds_left
