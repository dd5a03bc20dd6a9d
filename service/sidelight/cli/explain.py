"""`sidelight predict` and `sidelight explain`: ask a server, draw the answer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sidelight.cli.common import DEFAULT_SERVER
from sidelight.cli.jobs import run_job


def add_commands(commands: Any) -> None:
    predict = commands.add_parser("predict", help="ask a server for predictions")
    _client_arguments(predict)
    predict.set_defaults(run=_predict)

    explain = commands.add_parser("explain", help="ask a server for an explanation, as a PNG")
    _client_arguments(explain)
    explain.add_argument("--method", required=True)
    explain.add_argument("--target", type=int, action="append", default=[])
    explain.add_argument("--params", default="{}", help="JSON, e.g. '{\"n_steps\": 64}'")
    explain.add_argument("--out", type=Path, required=True, help="PNG to write")
    explain.add_argument("--json", type=Path, help="also write the numbers as JSON")
    explain.add_argument(
        "--request-id", default="", help="for jobs: resubmitting it returns the same job"
    )
    explain.set_defaults(run=_explain)


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="")
    parser.add_argument("--input", type=Path, required=True, help="image, .npy, .csv or .json")
    parser.add_argument("--timeout", type=float, default=120.0)


def model_info(client: Any, name: str) -> Any:
    for model in client.list_models().models:
        if model.name == name:
            return model
    raise ValueError(f"the server has no model {name!r}")


def _load_input(info: Any, path: Path) -> npt.NDArray[np.float32]:
    from sidelight_handlers import image, tabular

    shape = list(info.input.shape)
    value_range = (info.input.min, info.input.max) if info.input.HasField("min") else None
    if info.task == "image_classification":
        return image.load_images(path, shape, value_range)
    return tabular.load_rows(path, list(info.input.feature_names) or None, shape[-1])


def _predict(args: argparse.Namespace) -> int:
    from sidelight.client import Client, to_array

    with Client(args.server, timeout=args.timeout) as client:
        info = model_info(client, args.model)
        inputs = _load_input(info, args.input)
        reply = client.predict(args.model, inputs, model_version=args.version)
        outputs = to_array(reply.outputs)
        for row, predicted in enumerate(reply.predicted):
            print(f"instance {row}: {info.labels[predicted]} (p = {outputs[row, predicted]:.3f})")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from sidelight_handlers import image, tabular

    from sidelight.client import Client, to_array

    params = json.loads(args.params)
    with Client(args.server, timeout=args.timeout) as client:
        info = model_info(client, args.model)
        inputs = _load_input(info, args.input)
        call = {
            "targets": args.target,
            "params": params,
            "model_version": args.version,
            "request_id": args.request_id,
        }
        modes = {m.name: m.mode for m in info.methods}
        if modes.get(args.method) == "async":
            reply = run_job(client, client.submit_job(args.model, inputs, args.method, **call))
            if reply is None:
                return 1
        else:
            reply = client.explain(args.model, inputs, args.method, **call)
    outputs, attributions = to_array(reply.outputs), to_array(reply.attributions)
    titles = [
        f"{args.method}: {info.labels[t]} (p = {outputs[i, t]:.3f})"
        for i, t in enumerate(reply.targets)
    ]
    if info.task == "image_classification":
        image.render_overlays(inputs, attributions, titles, args.out)
    else:
        names = list(info.input.feature_names) or [f"x{i}" for i in range(inputs.shape[1])]
        tabular.render_bars(attributions, names, titles, args.out)
    quality = reply.quality
    partial = f" (partial: stopped by {quality.stopped_by})" if quality.partial else ""
    print(f"explanation {reply.explanation_id}: wrote {args.out}{partial}")
    for i, title in enumerate(titles):
        line = f"  instance {i}: {title}"
        if quality.relative_completeness_error:
            line += f", completeness error {quality.relative_completeness_error[i]:.2%}"
        print(line)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "explanation_id": reply.explanation_id,
                    "targets": list(reply.targets),
                    "outputs": outputs.tolist(),
                    "attributions": attributions.tolist(),
                    "model_evaluations": quality.model_evaluations,
                    "completeness_error": list(quality.completeness_error),
                    "seed": quality.seed if quality.HasField("seed") else None,
                }
            )
        )
    return 0
