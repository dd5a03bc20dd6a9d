"""`sidelight jobs get|watch|cancel JOB_ID`, and following a job to its end (used by `explain`
and `sanity --server` too)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sidelight.cli.common import DEFAULT_SERVER


def add_commands(commands: Any) -> None:
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


def describe(job: Any) -> str:
    from sidelight.v1 import explainer_pb2 as pb

    state = pb.JobState.Name(job.state)
    text = (
        f"job {job.job_id}: {state}, {job.progress.fraction:.0%} "
        f"({job.progress.model_evaluations} model evaluations)"
    )
    if job.error:
        text += f": {job.error}"
    return text


def run_job(client: Any, job: Any) -> Any:
    """Follow a submitted job to its end, printing progress; its result, or None."""
    last = follow_job(client, job)
    return None if last is None else last.result


def follow_job(client: Any, job: Any) -> Any:
    """Follow a submitted job to its end, printing progress; the job if SUCCEEDED, or None."""
    from sidelight.client import TERMINAL_JOB_STATES
    from sidelight.v1 import explainer_pb2 as pb

    print(describe(job), flush=True)
    last = job
    for update in client.watch_job(job.job_id):
        last = update
        print(describe(update), flush=True)
    if last.state not in TERMINAL_JOB_STATES:
        last = client.get_job(job.job_id)
    if last.state != pb.JobState.SUCCEEDED:
        print(f"error: {describe(last)}", file=sys.stderr)
        return None
    return last


def _job_command(args: argparse.Namespace) -> int:
    from sidelight.client import Client
    from sidelight.v1 import explainer_pb2 as pb

    with Client(args.server) as client:
        if args.action == "watch":
            job = client.get_job(args.job_id)
            for job in client.watch_job(args.job_id):
                print(describe(job), flush=True)
        elif args.action == "cancel":
            job = client.cancel_job(args.job_id)
            print(describe(job))
        else:
            job = client.get_job(args.job_id)
            print(describe(job))
    return 0 if job.state != pb.JobState.FAILED else 1
