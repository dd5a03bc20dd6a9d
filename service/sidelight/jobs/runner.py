"""Run one job's spec to its result: an explain job to an Explanation, with the same validation
and methods as the API's and the job's control (deadline, budget, cancellation) over every
model call; a sanity-check job to its report, checking for cancellation between methods.

A perturbation method asks the control between its rounds and returns a partial estimate when
stopped. Any other method (gradients, CAM) runs on a model that asks the control before every
call (sidelight.methods.checked) and raises Stopped: it has no estimate from part of its
passes, so the worker ends the job CANCELLED, hands it back, or FAILED with the reason."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from sidelight.errors import InvalidParams
from sidelight.explanations import Explanation, explanation_of, summarize
from sidelight.jobs.spec import JobKind, JobResult, JobSpec, StopReason
from sidelight.methods.base import Attribution, Batch, Params, SeededParams
from sidelight.methods.catalog import AnyMethod, method_for, parse_params
from sidelight.methods.checked import checked
from sidelight.methods.chunking import run_chunked
from sidelight.methods.perturbation import Control, Evaluator, PerturbationMethod
from sidelight.models.model import Model, PrivateModels
from sidelight.models.registry import ModelRegistry, ModelVersion
from sidelight.quality.evaluate import evaluate
from sidelight.quality.sanity import SanityOutcome, sanity_check
from sidelight.validation import parse_targets, validate_inputs


@dataclass
class JobRunner:
    registry: ModelRegistry
    device: torch.device
    # Rows per model call: at most max_rows, and at most max_call_bytes of input. Perturbed
    # inputs are built one round at a time, so this also bounds the memory a job takes. Fixed
    # per model, not learned from timings as the synchronous path does: a job's result must
    # not depend on how fast the machine was (the same seed gives the same bits), and a
    # model's float results can differ in the last bits between call sizes.
    max_rows: int = 16384
    max_call_bytes: int = 64 << 20
    max_instances: int = 1024
    # Embedded workers are threads beside the server's executor and each other: each has a
    # runner of its own, which runs copies of the models (see Model.private_copy).
    _own: PrivateModels = field(default_factory=PrivateModels)

    def model(self, name: str, version: str) -> Model:
        """The model a job of this name and version runs on (this runner's copy)."""
        return self._model(self.registry.get(name, version))

    def _model(self, entry: ModelVersion) -> Model:
        loaded = next((m for m in entry.replicas if m.device == self.device), entry.primary)
        return self._own(loaded)

    def run(self, spec: JobSpec, control: Control) -> JobResult:
        if spec.kind is JobKind.SANITY:
            return self.sanity(spec, control)
        return self.explain(spec, control)

    def sanity(self, spec: JobSpec, control: Control) -> SanityOutcome:
        entry = self.registry.get(spec.model, spec.model_version)
        model = self._model(entry)
        inputs = validate_inputs(entry, spec.inputs, self.max_instances).to(model.device)
        methods = spec.params.get("methods") or ()
        if not methods:
            raise InvalidParams("params.methods", "a sanity job names its methods")

        def step(fraction: float) -> None:
            # Between methods: a cancelled, lost or shut-down job stops here (a method's run
            # is short). A sanity job has no deadline or budget: those are refused at submit.
            control.progress(fraction, 0)
            reason = control.stop_reason(0, 0)
            if reason is not None:
                raise _Stopped(reason)

        try:
            return sanity_check(
                model,
                entry.version,
                list(methods),
                inputs,
                mode=spec.params.get("mode", "cascading"),
                seed=int(spec.params.get("seed", 0)),
                step=step,
            )
        except _Stopped as stop:
            return SanityOutcome(
                model.name, entry.version, "", 0, 0.0, "", [], [], stopped_by=str(stop)
            )

    def explain(self, spec: JobSpec, control: Control) -> Explanation:
        entry = self.registry.get(spec.model, spec.model_version)
        model = self._model(entry)
        method = method_for(model, spec.method)
        params = parse_params(method, spec.params)
        method.check_params(model, params)
        inputs = validate_inputs(entry, spec.inputs, self.max_instances).to(model.device)
        targets = parse_targets(spec.targets, inputs.shape[0], model.num_classes).to(model.device)
        seed = params.seed if isinstance(params, SeededParams) else None
        seeds = torch.full((inputs.shape[0],), seed or 0, dtype=torch.int64)
        batch = Batch(inputs, targets, seeds)
        max_rows = rows_per_call(inputs, self.max_rows, self.max_call_bytes)
        if isinstance(method, PerturbationMethod):
            attribution = method.run(model, batch, params, Evaluator(model, max_rows, control))
        else:
            attribution = self._whole(method, model, batch, params, max_rows, control)
        result = summarize(method, model, attribution)
        explanation = explanation_of(
            entry.name,
            entry.version,
            method,
            params,
            model,
            result,
            seed=seed,
            request_id=spec.request_id,
            instances=inputs.shape[0],
        )
        # A job's explanation is named after the job: every delivery computes the same bits,
        # and its audit record's id stays the same (a second delivery finds it recorded).
        explanation = dataclasses.replace(explanation, explanation_id=spec.job_id)
        if not spec.evaluate or attribution.stopped_by in ("cancelled", "lost", "shutdown"):
            return explanation
        # Scoring stops for a cancel, a lost lease or shutdown (Stopped, as above); a job past
        # its deadline or budget still scores what it computed.
        scoring = checked(model, lambda _evaluations, _rows: _ending(control))
        scores = evaluate(
            scoring,
            inputs,
            attribution.attributions.float(),
            attribution.targets,
            spec.evaluate,
            max_rows=max_rows,
        )
        quality = dataclasses.replace(explanation.quality, faithfulness=scores)
        return dataclasses.replace(explanation, quality=quality)

    def _whole(
        self,
        method: AnyMethod,
        model: Model,
        batch: Batch,
        params: Params,
        max_rows: int,
        control: Control,
    ) -> Attribution:
        """A method without a partial estimate (gradients, CAM), in calls of at most `max_rows`
        rows, each asking `control` first (Stopped when refused); progress between calls."""
        planned = max(1, method.evaluations_per_instance(params) * len(batch))

        def check(evaluations: int, rows: int) -> str | None:
            control.progress(min(1.0, evaluations / planned), evaluations)
            return control.stop_reason(evaluations, rows)

        stoppable = checked(model, check)
        attribution = run_chunked(
            batch,
            method.rows_per_instance(params),
            max_rows,
            lambda part: method.attribute(stoppable, part, params, max_rows),
        )
        control.progress(1.0, attribution.evaluations_per_instance * len(batch))
        return attribution


def _ending(control: Control) -> str | None:
    """Why the job ends now if it must (cancelled, lost, shut down), ignoring its deadline and
    budget."""
    reason = control.stop_reason(0, 0)  # no rows: no budget to exceed
    return None if reason == StopReason.DEADLINE else reason


class _Stopped(Exception):
    """A sanity job saw its cancellation (or lost its lease) between two methods."""


def rows_per_call(inputs: torch.Tensor, max_rows: int, max_call_bytes: int) -> int:
    """Rows per model call for a job on these inputs: at most `max_rows`, and at most
    `max_call_bytes` of input. On breast_cancer (120 bytes a row) kernel_shap ran 105 inst/s at
    256 rows a call, 207 at 1024, 441 at 4096, 586 at 16384 and 226 at 65536 (2 CPU threads)."""
    row_bytes = max(1, inputs[0].numel() * inputs.element_size())
    return max(1, min(max_rows, max_call_bytes // row_bytes))
