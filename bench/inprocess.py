"""A Sidelight server in the benchmark's own process, on a free port, with a client to it: the
job benchmarks run their jobs through it (SubmitJob, embedded worker, WatchJob to the end)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from sidelight.client import Client
from sidelight.settings import ServerSettings
from sidelight.transport.server import Service


class InProcessServer:
    """`Service.start(settings)` on an event loop in a thread of this process."""

    def __init__(self, settings: ServerSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(Service.start(settings), self.loop)
        self.service = future.result(120)
        self.client = Client(f"127.0.0.1:{self.service.endpoints.grpc_port}", timeout=600)

    def finished_job(self, model: str, rows: Any, method: str, **params: Any) -> Any:
        """Submit a job on `rows` for class 1 and watch it to its end: the final Job, which
        must carry a result."""
        job = self.client.submit_job(model, rows, method, targets=[1], params=params)
        for update in self.client.watch_job(job.job_id):
            job = update
        if not job.HasField("result"):
            raise RuntimeError(f"job {job.job_id} on {model} ended without a result: {job.error}")
        return job

    def stop(self) -> None:
        self.client.close()
        asyncio.run_coroutine_threadsafe(self.service.stop(1.0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
