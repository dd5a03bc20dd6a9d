"""A worker process that dies (os._exit, like an out-of-memory kill) on every job whose
request_id starts with "crash-", and runs the others normally. Started by
test_reliability.py; the crash is the only thing changed from `sidelight worker`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sidelight.jobs import runner
from sidelight.jobs.supervisor import run_worker_process
from sidelight.settings import QueueSettings, WorkerSettings

_run = runner.JobRunner.run


def _crashing_run(self, spec, control):  # type: ignore[no-untyped-def]
    if spec.request_id.startswith("crash-"):
        os._exit(137)
    return _run(self, spec, control)


if __name__ == "__main__":
    runner.JobRunner.run = _crashing_run  # type: ignore[method-assign]
    options = json.loads(sys.argv[1])
    settings = WorkerSettings(
        model_repository=Path(options["repository"]),
        redis_url=options["redis_url"],
        queue=QueueSettings(**options["queue"]),
        name=options["name"],
        metrics_port=None,
    )
    run_worker_process(settings, 0, serve_metrics=False)
