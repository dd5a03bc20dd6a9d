"""`sidelight worker`: processes that run jobs from a Redis queue."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidelight.cli.config import configurable
from sidelight.cli.options import audit_arguments, audit_settings, queue_arguments, queue_settings
from sidelight.settings import WorkerSettings


def add_commands(commands: Any) -> None:
    worker = commands.add_parser("worker", help="run job workers on a Redis queue")
    worker.add_argument("--model-repository", type=Path, help="required")
    worker.add_argument("--redis-url", help="required")
    worker.add_argument(
        "--redis-url-file",
        type=Path,
        help="a file holding the --redis-url (a mounted secret: kept out of the process list)",
    )
    worker.add_argument("-n", "--processes", type=int, default=1)
    worker.add_argument("--device", default="cpu")
    worker.add_argument("--name", default="", help="consumer name prefix (default: host name)")
    worker.add_argument("--host", default="127.0.0.1", help="where /metrics listens")
    worker.add_argument("--metrics-port", type=int, default=9096, help="-1: no /metrics")
    worker.add_argument("--torch-threads", type=int)
    queue_arguments(worker)
    audit_arguments(worker)
    configurable(worker, "worker", required=("model_repository", "redis_url"))
    worker.set_defaults(run=_worker)


def _worker(args: argparse.Namespace) -> int:
    from sidelight.jobs.supervisor import run_workers

    settings = WorkerSettings(
        model_repository=args.model_repository,
        redis_url=args.redis_url,
        queue=queue_settings(args),
        device=args.device,
        processes=args.processes,
        name=args.name,
        max_rows_per_call=args.job_rows_per_call,
        max_call_bytes=args.job_call_bytes,
        grace_seconds=args.job_grace,
        host=args.host,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        torch_threads=args.torch_threads,
        audit=audit_settings(args),
    )
    return run_workers(settings)
