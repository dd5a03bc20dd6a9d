"""`sidelight worker`: N worker processes on one Redis queue, restarted when they die.

Each process loads the model repository on its device and runs one job at a time. Processes,
not threads: a job is mostly torch (which releases the GIL) but also Python glue, and a crash
(out of memory, a segfault in a native library) must take down one job, not the pod.

Consumer names are "{name}-{index}" and a restarted process keeps its index, so it first takes
back what its predecessor held (its own pending entries) instead of waiting out the lease.
On SIGTERM the supervisor passes the signal on; each process stops claiming, lets its job
run for the grace period, then hands it back to the queue.

Metrics: with one process, it serves /metrics itself; with several, they write to a
prometheus_client multiprocess directory and the supervisor serves the sum. The remote models'
endpoint figures (sidelight_remote_*) are read from the process's clients at each scrape, so
only a single process serves them; with several, the API server's figures cover its own calls.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess

from sidelight.audit.log import AuditLog
from sidelight.settings import WorkerSettings

log = logging.getLogger(__name__)

# A process that died is started again after this long (doubling while it keeps dying fast).
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def consumer_name(settings: WorkerSettings, index: int) -> str:
    return f"{settings.name or socket.gethostname()}-{index}"


def run_worker_process(settings: WorkerSettings, index: int, serve_metrics: bool) -> None:
    """One worker process: load the models, claim and run jobs until SIGTERM."""
    import torch
    from prometheus_client import CollectorRegistry, start_http_server

    from sidelight.jobs.redis_queue import RedisJobQueue
    from sidelight.jobs.runner import JobRunner
    from sidelight.jobs.worker import Worker, observe_outcomes
    from sidelight.methods.catalog import check_model
    from sidelight.metrics import JobMetrics, RemoteCollector
    from sidelight.models.registry import ModelRegistry
    from sidelight.models.remote.module import remote_clients, remote_figures

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = torch.device(settings.device)
    registry = ModelRegistry.load(settings.model_repository, [device], check_model)
    queue = RedisJobQueue(settings.redis_url, settings.queue)
    metrics_registry = CollectorRegistry()
    metrics = JobMetrics(metrics_registry)
    remote = remote_clients(replica for entry in registry for replica in entry.replicas)
    if remote:  # read at each scrape: served by a single process only (see above)
        metrics_registry.register(RemoteCollector(lambda: remote_figures(remote)))
    if serve_metrics and settings.metrics_port is not None:
        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.host, registry=metrics_registry
        )
        log.info("worker metrics on http://%s:%d/metrics", settings.host, server.server_port)
    runner = JobRunner(
        registry,
        device,
        max_rows=settings.max_rows_per_call,
        max_call_bytes=settings.max_call_bytes,
    )
    audit = AuditLog.open(settings.audit, metrics_registry)
    worker = Worker(
        queue,
        runner,
        consumer_name(settings, index),
        grace_seconds=settings.grace_seconds,
        on_outcome=observe_outcomes(metrics),
        audit=audit,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.shutdown.set())
    log.info("worker %s ready (pid %d, %s)", worker.consumer, os.getpid(), device)
    try:
        worker.run()
    finally:
        queue.close()
        if audit is not None:
            audit.close()
    log.info("worker %s stopped", worker.consumer)


def _child(settings: WorkerSettings, index: int) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_worker_process(settings, index, serve_metrics=False)


def run_workers(settings: WorkerSettings) -> int:
    """Run `settings.processes` workers until SIGTERM/SIGINT; the exit code."""
    if settings.processes == 1:
        run_worker_process(settings, 0, serve_metrics=True)
        return 0
    return _Supervisor(settings).run()


class _Supervisor:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.context = multiprocessing.get_context("spawn")
        self.children: dict[int, BaseProcess] = {}
        self.delays = dict.fromkeys(range(settings.processes), RESTART_DELAY_S)
        self.started_at: dict[int, float] = {}

    def _start(self, index: int) -> None:
        child = self.context.Process(
            target=_child, args=(self.settings, index), name=f"sidelight-worker-{index}"
        )
        child.start()
        self.children[index] = child
        self.started_at[index] = time.monotonic()

    def run(self) -> int:
        folder = tempfile.mkdtemp(prefix="sidelight-metrics-")
        os.environ[MULTIPROC_ENV] = folder  # the children's metrics go to files here
        try:
            self._serve_metrics(folder)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stopping.set())
            for index in range(self.settings.processes):
                self._start(index)
            while not self.stopping.wait(0.2):
                self._restart_dead()
            return self._stop()
        finally:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)

    def _serve_metrics(self, folder: str) -> None:
        if self.settings.metrics_port is None:
            return
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        server, _thread = start_http_server(
            self.settings.metrics_port, addr=self.settings.host, registry=registry
        )
        log.info("workers' metrics on http://%s:%d/metrics", self.settings.host, server.server_port)

    def _restart_dead(self) -> None:
        for index, child in list(self.children.items()):
            if child.is_alive():
                continue
            lived = time.monotonic() - self.started_at[index]
            delay = self.delays[index] if lived < 60 else RESTART_DELAY_S
            log.error(
                "worker %d (pid %s) exited with %s after %.0fs; restarting in %.0fs",
                index,
                child.pid,
                child.exitcode,
                lived,
                delay,
            )
            if self.stopping.wait(delay):
                return
            self.delays[index] = min(delay * 2, MAX_RESTART_DELAY_S)
            self._start(index)

    def _stop(self) -> int:
        log.info("stopping %d workers", len(self.children))
        for child in self.children.values():
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        give_up = time.monotonic() + self.settings.grace_seconds + 10
        for child in self.children.values():
            child.join(max(0.0, give_up - time.monotonic()))
            if child.is_alive():
                log.error("worker pid %s did not stop in time: killed", child.pid)
                child.kill()
                child.join()
        return 0
