"""Assemble and run the service: models, scheduler, executors, job queue (and, without Redis,
its embedded workers), gRPC server, health, metrics.

    service = await Service.start(settings)      # listens; health SERVING
    await service.wait_for_termination()          # until SIGTERM/SIGINT (or stop())
    await service.stop()                          # graceful: NOT_SERVING, drain, stop

Shutdown order on SIGTERM (Kubernetes): health goes NOT_SERVING so that readiness fails and
traffic moves away; the server stops taking new calls and gives in-flight calls the grace
period; the scheduler closes and the executors drain what was accepted; embedded workers
finish their job within the grace period or hand it back.

Health: the empty service name is liveness (SERVING while the process can answer); the
Explainer service's status is readiness: NOT_SERVING while shutting down. The jobs' readiness
is apart, `sidelight.v1.Explainer.jobs`: NOT_SERVING while the job queue's Redis is unreachable
(checked every second; it comes back on its own), when synchronous calls are still served. The
Open Inference Protocol's service (inference.GRPCInferenceService, same port, same data plane)
reports the server's readiness in ServerReady. Each remote model has a name of its own,
`sidelight.remote.<model>` (sidelight.transport.remote_health): one endpoint down does not make
the whole server NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from sidelight.audit.log import AuditLog, VerificationCollector
from sidelight.batching.executor import BatchReport, DeviceExecutor
from sidelight.batching.lanes import LaneOverlap, lanes_for
from sidelight.batching.scheduler import Scheduler
from sidelight.blocking import BlockingCalls
from sidelight.dataplane import DataPlane
from sidelight.errors import Unavailable
from sidelight.jobs.memory_queue import MemoryJobQueue
from sidelight.jobs.queue import JobQueue
from sidelight.jobs.redis_queue import RedisJobQueue
from sidelight.jobs.runner import JobRunner
from sidelight.jobs.worker import Worker, observe_outcomes
from sidelight.memory import retain_freed_memory
from sidelight.methods.catalog import check_model
from sidelight.metrics import JobMetrics, Metrics, QueueCollector, RemoteCollector
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sidelight.models.remote.module import remote_clients, remote_figures
from sidelight.oip import grpc_service_pb2 as oip_pb2
from sidelight.oip import grpc_service_pb2_grpc as oip_pb2_grpc
from sidelight.quality.sampler import FaithfulnessSampler
from sidelight.settings import ServerSettings
from sidelight.transport.calls import Calls
from sidelight.transport.oip_servicer import InferenceServicer
from sidelight.transport.readiness import Readiness
from sidelight.transport.remote_health import RemoteHealth
from sidelight.transport.servicer import ExplainerServicer
from sidelight.v1 import explainer_pb2, explainer_pb2_grpc

log = logging.getLogger(__name__)

READINESS_PERIOD_S = 1.0
# Threads for the blocking calls to the job queue (Redis) and the audit store, apart from the
# event loop's default pool (sidelight.blocking): one hung dependency holds only its own.
JOB_QUEUE_THREADS = 8
AUDIT_THREADS = 4
# RPCs gRPC takes beyond the calls answered at once (ServerSettings.max_concurrent_rpcs): health
# checks, and refusals on their way out.
GRPC_RPCS_HEADROOM = 28
SERVICE_NAME = explainer_pb2.DESCRIPTOR.services_by_name["Explainer"].full_name
# Readiness of the jobs apart (SubmitJob, GetJob, ...): NOT_SERVING while Redis does not answer,
# when synchronous calls are still served.
JOBS_SERVICE_NAME = f"{SERVICE_NAME}.jobs"
OIP_SERVICE_NAME = oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass
class Endpoints:
    grpc_port: int
    metrics_port: int | None


class Service:
    def __init__(
        self,
        settings: ServerSettings,
        registry: ModelRegistry,
        metrics: Metrics,
        server: grpc.aio.Server,
        readiness: Readiness,
        scheduler: Scheduler,
        executors: list[DeviceExecutor],
        endpoints: Endpoints,
        metrics_server: Any,
        jobs: JobQueue,
        workers: list[tuple[Worker, threading.Thread]],
        sampler: FaithfulnessSampler | None = None,
        audit: AuditLog | None = None,
        *,
        plane: DataPlane,
        job_calls: BlockingCalls,
    ) -> None:
        self.settings = settings
        self._plane = plane
        self._job_calls = job_calls
        self.registry = registry
        self.metrics = metrics
        self.endpoints = endpoints
        self._server = server
        self.readiness = readiness
        self.scheduler = scheduler
        self._executors = executors
        self._metrics_server = metrics_server
        self.jobs = jobs
        self.sampler = sampler
        self.audit = audit
        self._workers = workers
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._readiness_watch: asyncio.Task[None] | None = None
        self._remote: RemoteHealth | None = None
        self._remote_probes: asyncio.Task[None] | None = None

    @property
    def executors(self) -> tuple[DeviceExecutor, ...]:
        return tuple(self._executors)

    @classmethod
    async def start(cls, settings: ServerSettings) -> Service:
        sys.setswitchinterval(settings.gil_switch_interval_s)
        if settings.retain_freed_memory:
            retain_freed_memory()
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        devices = [torch.device(d) for d in settings.devices]
        registry = ModelRegistry.load(settings.model_repository, devices, check_model)
        metrics = Metrics(CollectorRegistry())
        _publish_models(registry, metrics)
        remote = remote_clients(replica for entry in registry for replica in entry.replicas)
        if remote:
            metrics.registry.register(RemoteCollector(lambda: remote_figures(remote)))

        scheduler = Scheduler(
            settings.batching,
            on_depth=lambda model, delta: metrics.queue_depth.labels(model).inc(delta),
            on_drop=lambda model, reason: metrics.dropped.labels(model, reason).inc(),
        )
        replicas = {
            (entry.name, entry.version, replica.device): replica
            for entry in registry
            for replica in entry.replicas
        }

        def replica(name: str, version: str, device: torch.device) -> Model:
            return replicas[(name, version, device)]

        def lane_replica(device: torch.device) -> Callable[[str, str, torch.device], Model]:
            # The first lane runs the loaded modules; each other lane, copies of its own: the
            # methods hook a module while they run (Model.private_copy). Made now, before any
            # lane runs: a module copied while a method hooks it would carry the hook along.
            copies = {key: m.private_copy() for key, m in replicas.items() if key[2] == device}
            return lambda name, version, on: copies[(name, version, on)]

        cpu_threads = torch.get_num_threads()
        executors: list[DeviceExecutor] = []
        for device in devices:
            lanes = lanes_for(device, settings.batching.cpu_lanes, cpu_threads)
            overlap = LaneOverlap() if len(lanes) > 1 else None
            executors.extend(
                DeviceExecutor(
                    device,
                    scheduler,
                    replica if lane.index == 0 else lane_replica(device),
                    settings.batching,
                    _batch_observer(metrics),
                    threads=lane.threads,
                    alone_threads=lane.alone_threads,
                    overlap=overlap,
                    lane=lane.index,
                )
                for lane in lanes
            )
        audit = await asyncio.to_thread(AuditLog.open, settings.audit, metrics.registry)
        if audit is not None:  # the last `audit verify --sign`, read at scrape time
            metrics.registry.register(VerificationCollector(audit.store.last_verification))
        jobs, workers = _job_queue(settings, registry, devices[0], metrics, audit)
        sampler = (
            FaithfulnessSampler(
                metrics,
                settings.faithfulness_sample,
                seed=settings.faithfulness_seed,
                idle_for=scheduler.idle_for,
                on_scored=audit.quality if audit is not None else lambda scores: None,
            )
            if settings.faithfulness_sample > 0
            else None
        )
        job_calls = BlockingCalls(
            "job queue", threads=JOB_QUEUE_THREADS, wait_s=settings.jobs.redis_timeout_s
        )
        plane = DataPlane(
            registry,
            scheduler,
            jobs=jobs,
            sampler=sampler,
            audit=audit,
            max_instances_per_request=settings.max_instances_per_request,
            max_evaluations_per_request=settings.max_evaluations_per_request,
            max_evaluations_per_job=settings.jobs.max_evaluations_per_job,
            job_calls=job_calls,
            audit_calls=BlockingCalls("audit store", threads=AUDIT_THREADS, wait_s=5.0),
        )

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                ("grpc.max_send_message_length", settings.max_send_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            # gRPC's own cap, before a message is read: a backstop for memory above the calls'
            # own (Calls), which leaves room for health checks and says when to retry.
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs + GRPC_RPCS_HEADROOM,
        )
        health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        readiness = Readiness(health_servicer, (SERVICE_NAME, OIP_SERVICE_NAME), JOBS_SERVICE_NAME)
        calls = Calls(metrics, registry.names(), settings.max_concurrent_rpcs)
        explainer_pb2_grpc.add_ExplainerServicer_to_server(  # type: ignore[no-untyped-call]
            ExplainerServicer(plane, calls), server
        )
        oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            InferenceServicer(plane, calls, readiness), server
        )
        if settings.reflection:
            names = (SERVICE_NAME, OIP_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        if port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}")

        metrics_server, metrics_port = None, None
        if settings.metrics_port is not None:
            metrics_server, _thread = start_http_server(
                settings.metrics_port, addr=settings.host, registry=metrics.registry
            )
            metrics_port = int(metrics_server.server_port)

        for executor in executors:
            executor.start()
        for _worker, thread in workers:
            thread.start()
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await readiness.set(True)
        await readiness.set_jobs(True)
        service = cls(
            settings,
            registry,
            metrics,
            server,
            readiness,
            scheduler,
            executors,
            Endpoints(port, metrics_port),
            metrics_server,
            jobs,
            workers,
            sampler,
            audit,
            plane=plane,
            job_calls=job_calls,
        )
        if settings.jobs.redis_url is not None:
            service._readiness_watch = asyncio.ensure_future(service._watch_readiness())
        if remote:
            service._remote = RemoteHealth(remote, health_servicer)
            service._remote_probes = asyncio.ensure_future(service._remote.run())
        return service

    async def _watch_readiness(self) -> None:
        """The jobs' readiness follows the job queue: NOT_SERVING while Redis does not answer
        (the server's own stays SERVING: synchronous calls need no Redis)."""
        ready = True
        while True:
            try:
                healthy = await self._job_calls.run(self.jobs.healthy)
            except Unavailable:  # every thread is stuck on a Redis that does not answer
                healthy = False
            if healthy != ready:
                ready = healthy
                log.warning(
                    "job queue %s: %s %s",
                    "back" if ready else "unreachable",
                    JOBS_SERVICE_NAME,
                    "SERVING" if ready else "NOT_SERVING",
                )
                await self.readiness.set_jobs(ready)
            await asyncio.sleep(READINESS_PERIOD_S)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)

    def request_stop(self) -> None:
        asyncio.get_running_loop().create_task(self.stop())

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then let in-flight calls finish within the grace period.

        Idempotent: a second call waits for the first shutdown to finish.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._shutdown(grace))
        await asyncio.shield(self._stopping)

    async def _shutdown(self, grace: float | None) -> None:
        grace = self.settings.grace_period_s if grace is None else grace
        log.info("stopping: health NOT_SERVING, %.1fs grace for in-flight calls", grace)
        if self._readiness_watch is not None:
            self._readiness_watch.cancel()
        if self._remote_probes is not None:
            self._remote_probes.cancel()
        await self.readiness.stop()
        for worker, _thread in self._workers:
            worker.shutdown.set()  # stop claiming; the job in hand has the grace period
        await self._server.stop(grace)
        self.scheduler.close()
        for executor in self._executors:
            await asyncio.to_thread(executor.join, grace)
        for _worker, thread in self._workers:
            await asyncio.to_thread(thread.join, grace + 5)
        if self.sampler is not None:
            await asyncio.to_thread(self.sampler.close, grace)
        if self._remote is not None:  # after every thread that calls the remote models
            self._remote.close()
        self._plane.close()
        self.jobs.close()
        if self.audit is not None:  # after the workers: their records are written first
            await asyncio.to_thread(self.audit.close)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._stopped.set()


def _job_queue(
    settings: ServerSettings,
    registry: ModelRegistry,
    device: torch.device,
    metrics: Metrics,
    audit: AuditLog | None,
) -> tuple[JobQueue, list[tuple[Worker, threading.Thread]]]:
    """Redis when a URL is given (workers run apart: `sidelight worker`); else the in-process
    queue with worker threads here."""
    config = settings.jobs
    queue: JobQueue
    if config.redis_url is not None:
        queue = RedisJobQueue(
            config.redis_url, config.queue, command_timeout=config.redis_timeout_s
        )
        embedded = 0
    else:
        queue = MemoryJobQueue(config.queue)
        embedded = config.embedded_workers
    metrics.registry.register(QueueCollector(queue.stats))
    workers = []
    if embedded:
        observe = observe_outcomes(JobMetrics(metrics.registry))
        for index in range(embedded):
            runner = JobRunner(  # one per worker thread: its own copies of the models
                registry,
                device,
                max_rows=config.max_rows_per_call,
                max_call_bytes=config.max_call_bytes,
                max_instances=settings.max_instances_per_request,
            )
            worker = Worker(
                queue,
                runner,
                f"embedded-{index}",
                grace_seconds=config.grace_seconds,
                on_outcome=observe,
                audit=audit,
            )
            thread = threading.Thread(target=worker.run, name=f"job-worker-{index}", daemon=True)
            workers.append((worker, thread))
    return queue, workers


def _publish_models(registry: ModelRegistry, metrics: Metrics) -> None:
    count = 0
    for entry in registry:
        count += 1
        for replica in entry.replicas:
            metrics.model_info.labels(
                entry.name, entry.version, replica.format.value, str(replica.device)
            ).set(1)
    metrics.models_loaded.set(count)
    for name in registry.unavailable:
        metrics.model_unavailable.labels(name).set(1)


def _batch_observer(metrics: Metrics) -> Any:
    def observe(report: BatchReport) -> None:
        labels = (report.group.model, report.group.task, report.device)
        metrics.batch_size.labels(*labels).observe(report.instances)
        metrics.batch_duration.labels(*labels).observe(report.seconds)
        metrics.chunk_rows.labels(*labels).set(report.chunk_rows)
        if report.failed:
            metrics.batch_failures.labels(*labels).inc()
        if report.abandoned:
            metrics.batches_abandoned.labels(*labels).inc()
        waits = metrics.queue_wait.labels(report.group.model)
        for seconds in report.queue_waits:
            waits.observe(seconds)

    return observe
