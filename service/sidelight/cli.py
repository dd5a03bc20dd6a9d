"""The `sidelight` command.

    sidelight serve --model-repository var/model-repository [--port 50051] [--metrics-port 9095]
    sidelight serve ... --redis-url redis://127.0.0.1:6379/0    # jobs on Redis, run by:
    sidelight worker --model-repository var/model-repository --redis-url redis://... [-n 2]
    sidelight models build-demo --out var/model-repository --samples var/samples
    sidelight models list --server 127.0.0.1:50051
    sidelight predict --model digits --input var/samples/digit_3.png
    sidelight explain --model digits --method grad_cam --input var/samples/digit_3.png --out e.png
    sidelight explain --model breast_cancer --method kernel_shap --input ... --out s.png  (a job)
    sidelight jobs get|watch|cancel JOB_ID

Settings are built here, once, from the arguments, and passed down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from sidelight.audit.commands import add_audit_arguments
from sidelight.audit.commands import add_commands as add_audit_commands
from sidelight.errors import SidelightError
from sidelight.methods import EXPECTED_LIBRARY_WARNINGS
from sidelight.settings import (
    AUDIT_MODES,
    AuditSettings,
    BatchingSettings,
    JobSettings,
    QueueSettings,
    ServerSettings,
    WorkerSettings,
)

DEFAULT_SERVER = "127.0.0.1:50051"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for message in EXPECTED_LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    try:
        return int(args.run(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except SidelightError as exc:  # e.g. an audit record not found, a subject erased
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidelight", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="command")

    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--model-repository", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051, help="0: any free port")
    serve.add_argument("--metrics-port", type=int, default=9095, help="-1: no /metrics")
    serve.add_argument("--device", action="append", help="cpu, cuda, cuda:1 (repeatable)")
    serve.add_argument("--max-batch-size", type=int, default=BatchingSettings.max_batch_size)
    serve.add_argument("--max-wait-ms", type=float, default=BatchingSettings.max_wait_ms)
    serve.add_argument(
        "--max-queue-instances", type=int, default=BatchingSettings.max_queue_instances
    )
    serve.add_argument("--max-rows-per-call", type=int, default=BatchingSettings.max_rows_per_call)
    serve.add_argument("--fixed-chunks", action="store_true", help="no adaptive chunk sizes")
    serve.add_argument(
        "--cpu-lanes",
        type=int,
        help="executors per CPU device, each with a share of the threads (default: 2 if >= 2)",
    )
    serve.add_argument(
        "--extra-lane-min-call-ms",
        type=float,
        default=BatchingSettings.extra_lane_min_call_ms,
        help="lanes after the first take only models whose calls last this long on average",
    )
    serve.add_argument("--grace-period", type=float, default=ServerSettings.grace_period_s)
    serve.add_argument("--torch-threads", type=int)
    serve.add_argument(
        "--release-freed-memory",
        action="store_true",
        help="let malloc return freed memory to the OS after each batch (slower; lower RSS)",
    )
    serve.add_argument("--no-reflection", action="store_true")
    serve.add_argument(
        "--faithfulness-sample",
        type=float,
        default=ServerSettings.faithfulness_sample,
        help="fraction of explanations scored for faithfulness in the background (0: off)",
    )
    serve.add_argument(
        "--redis-url", help="queue jobs on this Redis (default: in-process, embedded workers)"
    )
    serve.add_argument(
        "--embedded-workers",
        type=int,
        default=JobSettings.embedded_workers,
        help="job worker threads in the server when there is no --redis-url (0: none)",
    )
    _queue_arguments(serve)
    _audit_arguments(serve)
    serve.add_argument(
        "--audit-record-predictions", action="store_true", help="record every Predict too"
    )
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="run job workers on a Redis queue")
    worker.add_argument("--model-repository", type=Path, required=True)
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("-n", "--processes", type=int, default=1)
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--name", default="", help="consumer name prefix (default: host name)")
    worker.add_argument("--host", default="127.0.0.1", help="where /metrics listens")
    worker.add_argument("--metrics-port", type=int, default=9096, help="-1: no /metrics")
    worker.add_argument("--torch-threads", type=int)
    _queue_arguments(worker)
    _audit_arguments(worker)
    worker.set_defaults(run=_worker)

    add_audit_commands(commands)

    models = commands.add_parser("models", help="model repository tools")
    model_commands = models.add_subparsers(required=True, metavar="command")
    build = model_commands.add_parser("build-demo", help="train and export the demo models")
    build.add_argument("--out", type=Path, default=Path("var/model-repository"))
    build.add_argument("--samples", type=Path, default=Path("var/samples"))
    build.add_argument("--only", action="append", choices=["digits", "breast_cancer", "resnet18"])
    build.set_defaults(run=_build_demo)
    listing = model_commands.add_parser("list", help="the models a server offers")
    listing.add_argument("--server", default=DEFAULT_SERVER)
    listing.set_defaults(run=_list_models)

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

    sanity = commands.add_parser(
        "sanity", help="model-parameter randomization checks of a model's methods"
    )
    sanity.add_argument("--model-repository", type=Path, default=Path("var/model-repository"))
    sanity.add_argument("--model", required=True)
    sanity.add_argument("--version", default="")
    sanity.add_argument(
        "--methods", default="", help="comma-separated (default: every gradient and CAM method)"
    )
    sanity.add_argument("--input", type=Path, help="instances to explain (.npy); default: samples")
    sanity.add_argument("--samples", type=int, default=32, help="instances, when no --input")
    sanity.add_argument("--mode", choices=["cascading", "independent"], default="cascading")
    sanity.add_argument("--out", type=Path, default=Path("sanity"), help="folder for JSON and PNG")
    sanity.add_argument("--seed", type=int, default=0)
    sanity.add_argument(
        "--data-randomization",
        action="store_true",
        help="also compare with the demo digits network retrained on permuted labels",
    )
    sanity.add_argument(
        "--server",
        default="",
        help="run as a job through this server's queue (host:port) instead of in this process",
    )
    sanity.set_defaults(run=_sanity)

    report = commands.add_parser(
        "quality-report",
        help="score every method of the demo models; write docs/quality.md's table",
    )
    report.add_argument("--model-repository", type=Path, default=Path("var/model-repository"))
    report.add_argument("--models", default="digits,breast_cancer")
    report.add_argument("--instances", type=int, default=32)
    report.add_argument("--out", type=Path, default=Path("docs/quality.md"))
    report.set_defaults(run=_quality_report)

    jobs = commands.add_parser("jobs", help="look at or cancel a job")
    job_commands = jobs.add_subparsers(required=True, metavar="command")
    for name, summary in (
        ("get", "print a job's state"),
        ("watch", "print a job's progress until it ends"),
        ("cancel", "cancel a job"),
    ):
        command = job_commands.add_parser(name, help=summary)
        command.add_argument("job_id")
        command.add_argument("--server", default=DEFAULT_SERVER)
        command.set_defaults(run=_job_command, action=name)
    return parser


def _queue_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = QueueSettings()
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=defaults.lease_seconds,
        help="a job not renewed for this long is taken over by another worker",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=defaults.max_deliveries,
        help="deliveries after which a job is dead-lettered",
    )
    parser.add_argument(
        "--job-retention",
        type=float,
        default=defaults.retention_seconds,
        help="seconds a finished job's state and result are kept",
    )
    parser.add_argument("--queue-prefix", default=defaults.prefix, help="Redis key prefix")
    parser.add_argument("--job-rows-per-call", type=int, default=JobSettings.max_rows_per_call)
    parser.add_argument(
        "--job-call-bytes",
        type=int,
        default=JobSettings.max_call_bytes,
        help="input bytes per model call in a job, at most",
    )
    parser.add_argument("--job-grace", type=float, default=JobSettings.grace_seconds)


def _queue_settings(args: argparse.Namespace) -> QueueSettings:
    return QueueSettings(
        lease_seconds=args.lease_seconds,
        max_deliveries=args.max_deliveries,
        retention_seconds=args.job_retention,
        prefix=args.queue_prefix,
    )


def _worker(args: argparse.Namespace) -> int:
    from sidelight.jobs.supervisor import run_workers

    settings = WorkerSettings(
        model_repository=args.model_repository,
        redis_url=args.redis_url,
        queue=_queue_settings(args),
        device=args.device,
        processes=args.processes,
        name=args.name,
        max_rows_per_call=args.job_rows_per_call,
        max_call_bytes=args.job_call_bytes,
        grace_seconds=args.job_grace,
        host=args.host,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        torch_threads=args.torch_threads,
        audit=_audit_settings(args),
    )
    return run_workers(settings)


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="")
    parser.add_argument("--input", type=Path, required=True, help="image, .npy, .csv or .json")
    parser.add_argument("--timeout", type=float, default=120.0)


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--audit",
        choices=AUDIT_MODES,
        default=AuditSettings.mode,
        help="strict: no explanation returned unrecorded (default); best_effort: returned, "
        "the failure counted; off: no audit log",
    )
    add_audit_arguments(parser)
    parser.add_argument(
        "--audit-store-inputs",
        action="store_true",
        help="keep raw inputs, encrypted under the subject's key (requests with a subject_id)",
    )


def _audit_settings(args: argparse.Namespace) -> AuditSettings:
    return AuditSettings(
        mode=args.audit,
        data_dir=args.audit_dir,
        url=args.audit_url,
        store_inputs=args.audit_store_inputs,
    )


def _serve(args: argparse.Namespace) -> int:
    from sidelight.errors import ConfigError
    from sidelight.transport.server import Service

    settings = ServerSettings(
        model_repository=args.model_repository,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        devices=tuple(args.device or ["cpu"]),
        batching=BatchingSettings(
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue_instances=args.max_queue_instances,
            max_rows_per_call=args.max_rows_per_call,
            adaptive_chunks=not args.fixed_chunks,
            cpu_lanes=args.cpu_lanes,
            extra_lane_min_call_ms=args.extra_lane_min_call_ms,
        ),
        grace_period_s=args.grace_period,
        reflection=not args.no_reflection,
        torch_threads=args.torch_threads,
        retain_freed_memory=not args.release_freed_memory,
        faithfulness_sample=args.faithfulness_sample,
        audit=replace(_audit_settings(args), record_predictions=args.audit_record_predictions),
        jobs=JobSettings(
            redis_url=args.redis_url,
            queue=_queue_settings(args),
            embedded_workers=args.embedded_workers,
            max_rows_per_call=args.job_rows_per_call,
            max_call_bytes=args.job_call_bytes,
            grace_seconds=args.job_grace,
        ),
    )

    async def run() -> None:
        service = await Service.start(settings)
        service.install_signal_handlers()
        metrics = (
            f", metrics on http://{settings.host}:{service.endpoints.metrics_port}/metrics"
            if service.endpoints.metrics_port is not None
            else ""
        )
        broken = service.registry.unavailable
        unavailable = f"; unavailable (see the log): {', '.join(broken)}" if broken else ""
        print(
            f"sidelight listening on {settings.host}:{service.endpoints.grpc_port}{metrics}; "
            f"models: {', '.join(service.registry.names())}{unavailable}",
            flush=True,
        )
        await service.wait_for_termination()

    try:
        asyncio.run(run())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from sidelight.demo.build import build_demo

    for report in build_demo(args.out, args.samples, args.only):
        accuracy = "" if report.accuracy is None else f" (held-out accuracy {report.accuracy:.3f})"
        print(f"built {report.name} in {report.path}{accuracy}")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    from sidelight.client import Client

    with Client(args.server) as client:
        for model in client.list_models().models:
            methods = ", ".join(m.name for m in model.methods)
            print(
                f"{model.name} v{model.latest_version} [{model.task}] input "
                f"{list(model.input.shape)} {model.input.dtype}: {methods}"
            )
    return 0


def _model_info(client: Any, name: str) -> Any:
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
        info = _model_info(client, args.model)
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
        info = _model_info(client, args.model)
        inputs = _load_input(info, args.input)
        call = {
            "targets": args.target,
            "params": params,
            "model_version": args.version,
            "request_id": args.request_id,
        }
        modes = {m.name: m.mode for m in info.methods}
        if modes.get(args.method) == "async":
            reply = _run_job(client, client.submit_job(args.model, inputs, args.method, **call))
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


def _sanity(args: argparse.Namespace) -> int:
    """Explain sample inputs with the trained model and at each randomization depth; print a
    table, write JSON and a PNG grid; exit 1 when a method the config holds to its threshold
    still resembles the trained model's maps after full randomization. In this process, or
    with --server as a job through that server's queue (the server's workers run it)."""
    import torch
    from sidelight_handlers.image import render_grid

    from sidelight.methods.base import Mode
    from sidelight.methods.catalog import METHODS, check_model
    from sidelight.models.registry import ModelRegistry
    from sidelight.quality.sanity import PERMUTED, sanity_check

    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    if args.server:
        if args.data_randomization:
            raise ValueError("--data-randomization retrains a model here: not with --server")
        outcome = _sanity_job(args, names)
        if outcome is None:
            return 1
    else:
        registry = ModelRegistry.load(args.model_repository, [torch.device("cpu")], check_model)
        entry = registry.get(args.model, args.version)
        model = entry.primary
        permuted = _permuted_labels_model(args, model) if args.data_randomization else None
        names = names or [m for m in model.config.methods if METHODS[m].mode is Mode.SYNC]
        inputs = _sanity_inputs(args, model.name, model.input_shape)
        outcome = sanity_check(
            model,
            entry.version,
            names,
            inputs,
            mode=args.mode,
            seed=args.seed,
            permuted=permuted,
        )
    _print_sanity(outcome)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"sanity-{outcome.model}-{outcome.mode}"
    report = outcome.to_json()
    for entry_ in report["methods"].values():
        del entry_["maps"]  # in the PNG
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    if outcome.reports:
        permuted_column = [PERMUTED] if outcome.reports[0].rows[-1].depth == PERMUTED else []
        columns = ["trained", *outcome.reports[0].layers, *permuted_column]
        render_grid(
            [(r.method, r.maps) for r in outcome.reports], columns, args.out / f"{stem}.png"
        )
    print(f"wrote {args.out / stem}.json and .png")
    if outcome.failed:
        print(f"FAILED the sanity threshold: {', '.join(outcome.failed)}", file=sys.stderr)
        return 1
    return 0


def _print_sanity(outcome: Any) -> None:
    print(
        f"{outcome.mode} randomization of {outcome.model} v{outcome.version}, "
        f"{outcome.instances} inputs; mean Spearman against the trained model's maps"
    )
    header = ("method", "depth", "rho", "|rho|", "rho nz", "|rho| nz", "SSIM")
    print("{:22s} {:24s} {:>7s} {:>7s} {:>7s} {:>8s} {:>6s}".format(*header))
    for report in outcome.reports:
        for row in report.rows:
            ssim = "" if row.ssim is None else f"{row.ssim:6.3f}"
            print(
                f"{report.method:22s} {row.depth:24s} {row.spearman:7.3f} "
                f"{row.spearman_abs:7.3f} {row.spearman_nonzero:7.3f} "
                f"{row.spearman_abs_nonzero:8.3f} {ssim:>6s}"
            )


def _sanity_job(args: argparse.Namespace, names: list[str]) -> Any:
    """Submit the checks to the server's queue, follow the job, return its outcome."""
    from sidelight.client import Client
    from sidelight.quality.sanity import SanityOutcome

    with Client(args.server) as client:
        info = _model_info(client, args.model)
        inputs = _sanity_inputs(args, info.name, tuple(info.input.shape)).numpy()
        job = client.submit_sanity_check(
            args.model,
            inputs,
            names,
            model_version=args.version,
            mode=args.mode,
            seed=args.seed,
        )
        last = _follow_job(client, job)
    if last is None:
        return None
    return SanityOutcome.from_json(json.loads(last.sanity_report_json))


def _permuted_labels_model(args: argparse.Namespace, model: Any) -> Any:
    """The demo digits network retrained on permuted labels, exported and loaded as the
    service loads models (same config)."""
    import shutil
    import tempfile

    import torch

    from sidelight.demo.build import export_program, train_digits
    from sidelight.models.config import load_config
    from sidelight.models.loaders import load_model

    if model.name != "digits" or model.input_shape != (1, 8, 8):
        raise ValueError("--data-randomization retrains the demo digits model only")
    network, _x_train, x_test, _y_test = train_digits(args.seed, permute_labels=True)
    folder = Path(tempfile.mkdtemp(prefix="sidelight-permuted-")) / "digits"
    export_program(network, torch.from_numpy(x_test[:2]), folder / "1" / "model.pt2")
    shutil.copyfile(args.model_repository / "digits" / "config.yaml", folder / "config.yaml")
    for extra in ("background.npy",):
        source = args.model_repository / "digits" / extra
        if source.exists():
            shutil.copyfile(source, folder / extra)
    return load_model(folder, "1", load_config(folder / "config.yaml"), torch.device("cpu"))


def _sanity_inputs(args: argparse.Namespace, name: str, shape: tuple[int, ...]) -> Any:
    import torch

    if args.input is not None:
        array = np.load(args.input, allow_pickle=False).astype(np.float32)
        return torch.from_numpy(array[None] if array.ndim == len(shape) else array)
    from sklearn.datasets import load_breast_cancer, load_digits

    if shape == (1, 8, 8):
        images = load_digits().images[-args.samples :] / 16.0
        return torch.from_numpy(images.astype(np.float32)[:, None])
    if shape == (30,):
        return torch.from_numpy(load_breast_cancer().data[-args.samples :].astype(np.float32))
    raise ValueError(f"model {name!r}: give --input (a .npy of instances)")


REPORT_BEGIN = "<!-- quality-report:begin (generated by sidelight quality-report) -->"
REPORT_END = "<!-- quality-report:end -->"


def _quality_report(args: argparse.Namespace) -> int:
    """Score every method of each model and put the table between the markers of --out."""
    import datetime

    import torch

    from sidelight.methods.catalog import check_model
    from sidelight.models.registry import ModelRegistry
    from sidelight.quality.report import held_out, markdown, score_method

    torch.manual_seed(0)
    registry = ModelRegistry.load(args.model_repository, [torch.device("cpu")], check_model)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = registry.get(name).primary
        inputs = held_out(model, args.instances)
        for method in model.config.methods:
            row = score_method(model, method, inputs)
            rows.append(row)
            print(
                f"{name} {method}: deletion {row.deletion:.3f} ({row.random_deletion:.3f}), "
                f"insertion {row.insertion:.3f} ({row.random_insertion:.3f}) in {row.seconds:.1f}s",
                flush=True,
            )
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes")
    header = (
        f"Generated {when} by `sidelight quality-report --instances {args.instances}` "
        f"(held-out inputs; torch {torch.__version__})."
    )
    table = markdown(rows, header)
    text = args.out.read_text() if args.out.exists() else f"{REPORT_BEGIN}\n{REPORT_END}\n"
    if REPORT_BEGIN not in text or REPORT_END not in text:
        text += f"\n{REPORT_BEGIN}\n{REPORT_END}\n"
    before, rest = text.split(REPORT_BEGIN, 1)
    _, after = rest.split(REPORT_END, 1)
    args.out.write_text(f"{before}{REPORT_BEGIN}\n\n{table}\n{REPORT_END}{after}")
    print(f"wrote the table into {args.out}")
    return 0


def _describe(job: Any) -> str:
    from sidelight.v1 import explainer_pb2 as pb

    state = pb.JobState.Name(job.state)
    text = (
        f"job {job.job_id}: {state}, {job.progress.fraction:.0%} "
        f"({job.progress.model_evaluations} model evaluations)"
    )
    if job.error:
        text += f": {job.error}"
    return text


def _run_job(client: Any, job: Any) -> Any:
    """Follow a submitted job to its end, printing progress; its result, or None."""
    last = _follow_job(client, job)
    return None if last is None else last.result


def _follow_job(client: Any, job: Any) -> Any:
    """Follow a submitted job to its end, printing progress; the job if SUCCEEDED, or None."""
    from sidelight.client import TERMINAL_JOB_STATES
    from sidelight.v1 import explainer_pb2 as pb

    print(_describe(job), flush=True)
    last = job
    for update in client.watch_job(job.job_id):
        last = update
        print(_describe(update), flush=True)
    if last.state not in TERMINAL_JOB_STATES:
        last = client.get_job(job.job_id)
    if last.state != pb.JobState.SUCCEEDED:
        print(f"error: {_describe(last)}", file=sys.stderr)
        return None
    return last


def _job_command(args: argparse.Namespace) -> int:
    from sidelight.client import Client
    from sidelight.v1 import explainer_pb2 as pb

    with Client(args.server) as client:
        if args.action == "watch":
            job = client.get_job(args.job_id)
            for job in client.watch_job(args.job_id):
                print(_describe(job), flush=True)
        elif args.action == "cancel":
            job = client.cancel_job(args.job_id)
            print(_describe(job))
        else:
            job = client.get_job(args.job_id)
            print(_describe(job))
    return 0 if job.state != pb.JobState.FAILED else 1


if __name__ == "__main__":
    sys.exit(main())
