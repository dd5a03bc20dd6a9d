"""`sidelight serve`: the gRPC service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidelight.cli.config import configurable
from sidelight.cli.options import audit_arguments, audit_settings, queue_arguments, queue_settings
from sidelight.settings import BatchingSettings, JobSettings, ServerSettings


def add_commands(commands: Any) -> None:

    serve = commands.add_parser("serve", help="run the gRPC service")
    serve.add_argument("--model-repository", type=Path, help="required")
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
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=ServerSettings.max_receive_message_bytes,
        help="largest request message taken (larger: RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=ServerSettings.max_concurrent_rpcs,
        help="RPCs answered at once, streams included (more: RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--max-evaluations-per-request",
        type=int,
        default=ServerSettings.max_evaluations_per_request,
        help="model evaluations one synchronous request may cost (instances x steps/samples)",
    )
    serve.add_argument(
        "--max-job-evaluations",
        type=int,
        default=JobSettings.max_evaluations_per_job,
        help="model evaluations one job may cost (its params.max_evaluations at most)",
    )
    serve.add_argument(
        "--redis-timeout",
        type=float,
        default=JobSettings.redis_timeout_s,
        help="seconds a Redis command may take before the call answers UNAVAILABLE",
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
        "--redis-url-file",
        type=Path,
        help="a file holding the --redis-url (a mounted secret: kept out of the process list)",
    )
    serve.add_argument(
        "--embedded-workers",
        type=int,
        default=JobSettings.embedded_workers,
        help="job worker threads in the server when there is no --redis-url (0: none)",
    )
    queue_arguments(serve)
    audit_arguments(serve)
    serve.add_argument(
        "--audit-record-predictions", action="store_true", help="record every Predict too"
    )
    configurable(serve, "serve", required=("model_repository",))
    serve.set_defaults(run=_serve)


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
        max_receive_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_evaluations_per_request=args.max_evaluations_per_request,
        grace_period_s=args.grace_period,
        reflection=not args.no_reflection,
        torch_threads=args.torch_threads,
        retain_freed_memory=not args.release_freed_memory,
        faithfulness_sample=args.faithfulness_sample,
        audit=replace(audit_settings(args), record_predictions=args.audit_record_predictions),
        jobs=JobSettings(
            redis_url=args.redis_url,
            queue=queue_settings(args),
            embedded_workers=args.embedded_workers,
            max_rows_per_call=args.job_rows_per_call,
            max_call_bytes=args.job_call_bytes,
            grace_seconds=args.job_grace,
            max_evaluations_per_job=args.max_job_evaluations,
            redis_timeout_s=args.redis_timeout,
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
