"""Options `serve` and `worker` share: the job queue's and the audit log's."""

from __future__ import annotations

import argparse

from sidelight.audit.commands import add_audit_arguments
from sidelight.settings import AUDIT_MODES, AuditSettings, JobSettings, QueueSettings


def queue_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--max-queued-jobs",
        type=int,
        default=defaults.max_queued_jobs,
        help="jobs waiting for a worker, at most (more: RESOURCE_EXHAUSTED, retry-after)",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=int,
        default=defaults.max_queued_bytes,
        help="input bytes of the jobs not finished, at most (more: RESOURCE_EXHAUSTED)",
    )
    parser.add_argument("--job-rows-per-call", type=int, default=JobSettings.max_rows_per_call)
    parser.add_argument(
        "--job-call-bytes",
        type=int,
        default=JobSettings.max_call_bytes,
        help="input bytes per model call in a job, at most",
    )
    parser.add_argument("--job-grace", type=float, default=JobSettings.grace_seconds)


def queue_settings(args: argparse.Namespace) -> QueueSettings:
    return QueueSettings(
        lease_seconds=args.lease_seconds,
        max_deliveries=args.max_deliveries,
        retention_seconds=args.job_retention,
        prefix=args.queue_prefix,
        max_queued_jobs=args.max_queued_jobs,
        max_queued_bytes=args.max_queued_bytes,
    )


def audit_arguments(parser: argparse.ArgumentParser) -> None:
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


def audit_settings(args: argparse.Namespace) -> AuditSettings:
    return AuditSettings(
        mode=args.audit,
        data_dir=args.audit_dir,
        url=args.audit_url,
        store_inputs=args.audit_store_inputs,
    )
