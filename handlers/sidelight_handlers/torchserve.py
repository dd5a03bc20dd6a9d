"""Sidelight's TorchServe handler: predictions served in the worker, explanations by Sidelight.

Archive a TorchScript (.pt) or torch.export (.pt2) model with it, shipping Sidelight's
`config.yaml` (input shape and dtype, what the model outputs) and, optionally, the class names:

    torch-model-archiver --model-name breast_cancer --version 1 \\
        --serialized-file model.pt2 --handler handlers/sidelight_handlers/torchserve.py \\
        --extra-files config.yaml,index_to_name.json --config-file model-config.yaml

TorchServe imports this file by its name (`torchserve`) from the unpacked archive and calls the
module-level `handle` with every batch. Request bodies are JSON:

    /predictions   {"instances": [row, ...]} or {"data": ...}, or a single row
                   -> {"predictions": [[class probabilities], ...]}, one per row
    /explanations  {"instances": [...], "targets": [t, ...] or "target": t,
                    "method": "integrated_gradients", "params": {"n_steps": 32}}
                   -> {"explanations": [attributions per row], "targets": [...], ...}

TorchServe's own explain path reads only request 0 of a batch. Here every request counts: the
batch's explanation rows go to Sidelight's Explain RPC, one call per (method, params) with a
target per row, the calls in flight together, each answer cut back into its requests. A
request that fails (a bad body, Sidelight down or late) gets its own HTTP status; the others
of the batch, and every prediction, are answered as usual.

Settings come from the `handler:` section of the archive's model-config.yaml (TorchServe
passes it as `context.model_yaml_config`), else the environment (SIDELIGHT_ADDRESS, ...):

    handler:
      sidelight_address: 127.0.0.1:50051   # SIDELIGHT_ADDRESS
      sidelight_deadline_s: 10             # SIDELIGHT_DEADLINE_S, per explanation batch
      sidelight_model: breast_cancer       # SIDELIGHT_MODEL; default: TorchServe's name
      sidelight_model_version: ""          # SIDELIGHT_MODEL_VERSION; "": Sidelight's latest
      default_method: integrated_gradients # SIDELIGHT_METHOD; when a body names none

This is the one file of `handlers/` that imports the service; nothing imports it.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import torch
from google.protobuf import json_format, struct_pb2
from sidelight import tensors
from sidelight.models.config import ModelConfig, OutputKind, load_config
from sidelight.models.mar import CONFIG, INDEX_TO_NAME, class_names
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc
from torch import nn
from ts.torch_handler.base_handler import BaseHandler

log = logging.getLogger(__name__)

# A batch of images and their attributions passes gRPC's 4 MiB default: the limits of
# sidelight.client (not imported: it pulls the whole service into the worker).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
_DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64}
# Sidelight's status codes as HTTP statuses of the request they concern.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class RequestError(Exception):
    """One request of the batch is answered with `status` and this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class Settings:
    address: str
    deadline_s: float
    model: str
    model_version: str
    default_method: str

    @classmethod
    def from_context(cls, section: Mapping[str, Any], model_name: str) -> Settings:
        def pick(key: str, env: str, default: str = "") -> str:
            value = section.get(key)
            return str(value) if value is not None else os.environ.get(env, default)

        address = pick("sidelight_address", "SIDELIGHT_ADDRESS")
        if not address:
            raise ValueError(
                "handler.sidelight_address (model-config.yaml) or SIDELIGHT_ADDRESS is required"
            )
        return cls(
            address=address,
            deadline_s=float(pick("sidelight_deadline_s", "SIDELIGHT_DEADLINE_S", "10")),
            model=pick("sidelight_model", "SIDELIGHT_MODEL", model_name),
            model_version=pick("sidelight_model_version", "SIDELIGHT_MODEL_VERSION"),
            default_method=pick("default_method", "SIDELIGHT_METHOD", "integrated_gradients"),
        )


@dataclass
class Explanation:
    """One /explanations request of the batch: its rows, targets and method."""

    index: int  # the request's position in the batch
    rows: npt.NDArray[Any]  # n x input shape
    targets: list[int] | None  # one per row, or None: the predicted class
    method: str
    params: dict[str, Any]

    @property
    def group(self) -> tuple[str, str]:
        return self.method, json.dumps(self.params, sort_keys=True)


class SidelightHandler(BaseHandler):  # type: ignore[misc]
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.context = context
        self.manifest = context.manifest
        gpu = properties.get("gpu_id")
        cuda = torch.cuda.is_available() and gpu is not None
        self.device = torch.device(f"cuda:{gpu}" if cuda else "cpu")
        self.config = _config(model_dir)
        self.model = _load_model(model_dir / self.manifest["model"]["serializedFile"], self.device)
        section = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        self.settings = Settings.from_context(section, context.model_name)
        self.channel = grpc.insecure_channel(self.settings.address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.ExplainerStub(self.channel)  # type: ignore[no-untyped-call]
        self.initialized = True
        log.info("Sidelight handler: explanations go to %s", self.settings)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        answers: list[Any] = [None] * len(data)
        predictions, explanations = [], []
        for index, request in enumerate(data):
            try:
                body = _body(request)
                if context.get_request_header(index, "explain") == "True":
                    explanations.append(self._explanation(index, body))
                else:
                    predictions.append((index, self._rows(body)))
            except RequestError as exc:
                answers[index] = self._fail(index, exc)
        for index, answer in self._predict(predictions):
            answers[index] = answer
        for index, answer in self._explain(explanations):
            answers[index] = answer
        return answers

    def _fail(self, index: int, error: RequestError) -> dict[str, Any]:
        self.context.set_response_status(error.status, str(error), index)
        return {"code": error.status, "error": str(error)}

    def _rows(self, body: Any) -> npt.NDArray[Any]:
        """The body's rows as n x input shape, in the config's dtype."""
        found = body.get("instances", body.get("data")) if isinstance(body, dict) else body
        if found is None:
            raise RequestError(400, 'instances: give rows as {"instances": [row, ...]}')
        shape = tuple(self.config.input.shape)
        try:
            rows = np.asarray(found, dtype=_DTYPES[self.config.input.dtype])
        except (TypeError, ValueError) as exc:
            raise RequestError(400, f"instances: not an array of numbers ({exc})") from exc
        if rows.shape == shape:
            rows = rows[None]
        if rows.shape[1:] != shape or rows.shape[0] < 1:
            raise RequestError(
                400,
                f"instances: shape {list(rows.shape)}, expected [n, {', '.join(map(str, shape))}]",
            )
        self._check_values(rows)
        return rows

    def _check_values(self, rows: npt.NDArray[Any]) -> None:
        """Sidelight refuses a whole Explain call for one bad value: refuse the request
        that holds it here, so that the requests sharing its call still get answers."""
        bad = ~np.isfinite(rows)
        limits = self.config.input.range
        if limits is not None:
            bad |= (rows < limits[0]) | (rows > limits[1])
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            allowed = f"finite, within {list(limits)}" if limits else "finite"
            raise RequestError(400, f"instances[{row}]: values must be {allowed}")

    def _probabilities(self, rows: npt.NDArray[Any]) -> torch.Tensor:
        with torch.inference_mode():
            outputs: torch.Tensor = self.model(torch.as_tensor(rows, device=self.device))
        if self.config.output is OutputKind.LOGITS:
            outputs = torch.softmax(outputs, dim=1)
        return outputs.float().cpu()

    def _predict(
        self, requests: list[tuple[int, npt.NDArray[Any]]]
    ) -> list[tuple[int, dict[str, Any]]]:
        """One forward pass over every prediction row of the batch."""
        if not requests:
            return []
        probabilities = self._probabilities(np.concatenate([rows for _, rows in requests]))
        answers, start = [], 0
        for index, rows in requests:
            chunk = probabilities[start : start + len(rows)]
            answers.append((index, {"predictions": chunk.tolist()}))
            start += len(rows)
        return answers

    def _explanation(self, index: int, body: Any) -> Explanation:
        rows = self._rows(body)
        options = body if isinstance(body, dict) else {}
        targets = options.get("targets", options.get("target"))
        if isinstance(targets, int) and not isinstance(targets, bool):
            targets = [targets] * len(rows)
        classes = len(self.config.labels)
        if targets is not None and (
            not isinstance(targets, list)
            or len(targets) != len(rows)
            or not all(_is_class(t, classes) for t in targets)
        ):
            raise RequestError(
                400, f"targets: give one class index in [0, {classes}) per row ({len(rows)})"
            )
        params = options.get("params", {})
        if not isinstance(params, dict):
            raise RequestError(400, 'params: must be an object, e.g. {"n_steps": 32}')
        method = options.get("method", self.settings.default_method)
        return Explanation(index, rows, targets, str(method), params)

    def _explain(self, requests: list[Explanation]) -> list[tuple[int, dict[str, Any]]]:
        """One Explain call per (method, params), all in flight at once, each within the
        deadline; a failed call fails only the requests it carried."""
        groups: dict[tuple[str, str], list[Explanation]] = {}
        for request in requests:
            groups.setdefault(request.group, []).append(request)
        calls = [(members, self._call(members)) for members in groups.values()]
        answers: list[tuple[int, dict[str, Any]]] = []
        for members, future in calls:
            try:
                response = future.result()
            except grpc.RpcError as exc:
                # The futures' errors are also grpc.Call: code() and details().
                error = self._rpc_error(exc)  # type: ignore[arg-type]
                answers.extend((m.index, self._fail(m.index, error)) for m in members)
                continue
            answers.extend(_split(members, response))
        return answers

    def _call(self, members: list[Explanation]) -> Any:
        rows = np.concatenate([m.rows for m in members])
        targets = self._targets(members)
        message = pb.ExplainRequest(
            model=self.settings.model,
            model_version=self.settings.model_version,
            inputs=_tensor(rows),
            method=members[0].method,
            targets=targets,
        )
        if members[0].params:
            message.params.CopyFrom(_struct(members[0].params))
        return self.stub.Explain.future(message, timeout=self.settings.deadline_s)

    def _targets(self, members: list[Explanation]) -> list[int]:
        """A class per row: the body's, else the class this model predicts (the same archive
        Sidelight explains), so that one call serves requests with and without targets."""
        missing = [m for m in members if m.targets is None]
        predicted = (
            self._probabilities(np.concatenate([m.rows for m in missing])).argmax(1).tolist()
            if missing
            else []
        )
        targets: list[int] = []
        for member in members:
            if member.targets is None:
                member.targets, predicted = (
                    predicted[: len(member.rows)],
                    predicted[len(member.rows) :],
                )
            targets.extend(member.targets)
        return targets

    def _rpc_error(self, exc: grpc.Call) -> RequestError:
        code = exc.code()
        where = f"Sidelight at {self.settings.address}"
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            detail = f"{where} did not answer within {self.settings.deadline_s:g} s"
        elif code is grpc.StatusCode.UNAVAILABLE:
            detail = f"{where} is unavailable: {exc.details()}"
        else:
            detail = f"{where}: {code.name}: {exc.details()}"
        return RequestError(_HTTP_STATUS.get(code, 502), detail)


def _is_class(target: Any, classes: int) -> bool:
    return isinstance(target, int) and not isinstance(target, bool) and 0 <= target < classes


def _split(members: Sequence[Explanation], response: Any) -> list[tuple[int, dict[str, Any]]]:
    """Cut one Explain response back into its requests, in the order they were sent."""
    attributions = tensors.decode("attributions", **_fields(response.attributions))
    outputs = tensors.decode("outputs", **_fields(response.outputs))
    completeness = list(response.quality.completeness_error)
    answers, start = [], 0
    for member in members:
        end = start + len(member.rows)
        answer: dict[str, Any] = {
            "explanations": attributions[start:end].tolist(),
            "targets": list(response.targets[start:end]),
            "predictions": outputs[start:end].tolist(),
            "method": response.method,
            "model": response.model,
            "model_version": response.model_version,
            "explanation_id": response.explanation_id,
        }
        if completeness:
            answer["completeness_error"] = completeness[start:end]
        if response.quality.baseline_digest:
            answer["baseline_digest"] = response.quality.baseline_digest
        answers.append((member.index, answer))
        start = end
    return answers


def _fields(message: Any) -> dict[str, Any]:
    return {"dtype": message.dtype, "shape": list(message.shape), "data": message.data}


def _tensor(array: npt.NDArray[Any]) -> pb.Tensor:
    dtype, shape, data = tensors.encode(np.ascontiguousarray(array))
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


def _struct(params: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(params, struct)
    return struct


def _body(request: Mapping[str, Any]) -> Any:
    """The request's JSON body: TorchServe decodes it for application/json; the gRPC API and
    other content types hand over bytes."""
    raw = request.get("body", request.get("data"))
    if isinstance(raw, (bytes, bytearray)):
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RequestError(400, f"body: not JSON ({exc})") from exc
    if raw is None:
        raise RequestError(400, 'body: empty; send JSON rows as {"instances": [...]}')
    return raw


def _config(model_dir: Path) -> ModelConfig:
    """Sidelight's config.yaml shipped in the archive, its labels from index_to_name.json
    when it gives none: read as Sidelight reads it."""
    names_file = model_dir / INDEX_TO_NAME
    names = None
    if names_file.is_file():
        names = (str(names_file), class_names(json.loads(names_file.read_text()), str(model_dir)))
    return load_config(model_dir / CONFIG, class_names=names)


def _load_model(path: Path, device: torch.device) -> nn.Module:
    """The archive's model, as Sidelight loads it: TorchScript or torch.export, no pickle."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, deprecated in 2.13
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecations inside torch
        if path.suffix == ".pt2":
            # An exported graph runs as it was exported (eval mode); it refuses .eval().
            exported: nn.Module = torch.export.load(str(path)).module()
            return exported.to(device)
        module: nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    return module.eval()


# TorchServe calls a module-level `handle` when the file has one (it would otherwise insist on
# a single class in the file); the handler lives as long as the worker, as TorchServe's own
# custom-service example keeps it.
_service = SidelightHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    """TorchServe's entry point: loads the model on the first call (data None), then answers
    each batch."""
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
