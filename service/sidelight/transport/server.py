"""Assemble and run the service: models, scheduler, executors, gRPC server, health, metrics.

    service = await Service.start(settings)      # listens; health SERVING
    await service.wait_for_termination()          # until SIGTERM/SIGINT (or stop())
    await service.stop()                          # graceful: NOT_SERVING, drain, stop

Shutdown order on SIGTERM (Kubernetes): health goes NOT_SERVING so that readiness fails and
traffic moves away; the server stops taking new calls and gives in-flight calls the grace
period; the scheduler closes and the executors drain what was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from sidelight.batching.executor import BatchReport, DeviceExecutor
from sidelight.batching.scheduler import Scheduler
from sidelight.dataplane import DataPlane
from sidelight.memory import retain_freed_memory
from sidelight.methods.catalog import check_model
from sidelight.metrics import Metrics
from sidelight.models.model import Model
from sidelight.models.registry import ModelRegistry
from sidelight.settings import ServerSettings
from sidelight.transport.servicer import ExplainerServicer
from sidelight.v1 import explainer_pb2, explainer_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = explainer_pb2.DESCRIPTOR.services_by_name["Explainer"].full_name


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
        health_servicer: health_aio.HealthServicer,
        scheduler: Scheduler,
        executors: list[DeviceExecutor],
        endpoints: Endpoints,
        metrics_server: Any,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.endpoints = endpoints
        self._server = server
        self._health = health_servicer
        self._scheduler = scheduler
        self._executors = executors
        self._metrics_server = metrics_server
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None

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

        executors = [
            DeviceExecutor(device, scheduler, replica, settings.batching, _batch_observer(metrics))
            for device in devices
        ]
        plane = DataPlane(
            registry, scheduler, max_instances_per_request=settings.max_instances_per_request
        )

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        explainer_pb2_grpc.add_ExplainerServicer_to_server(  # type: ignore[no-untyped-call]
            ExplainerServicer(plane, metrics), server
        )
        health_servicer = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
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
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return cls(
            settings,
            registry,
            metrics,
            server,
            health_servicer,
            scheduler,
            executors,
            Endpoints(port, metrics_port),
            metrics_server,
        )

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
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._scheduler.close()
        for executor in self._executors:
            await asyncio.to_thread(executor.join, grace)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._stopped.set()


def _publish_models(registry: ModelRegistry, metrics: Metrics) -> None:
    count = 0
    for entry in registry:
        count += 1
        for replica in entry.replicas:
            metrics.model_info.labels(
                entry.name, entry.version, replica.format.value, str(replica.device)
            ).set(1)
    metrics.models_loaded.set(count)


def _batch_observer(metrics: Metrics) -> Any:
    def observe(report: BatchReport) -> None:
        labels = (report.group.model, report.group.task, report.device)
        metrics.batch_size.labels(*labels).observe(report.instances)
        metrics.batch_duration.labels(*labels).observe(report.seconds)
        metrics.chunk_rows.labels(*labels).set(report.chunk_rows)
        if report.failed:
            metrics.batch_failures.labels(*labels).inc()
        waits = metrics.queue_wait.labels(report.group.model)
        for seconds in report.queue_waits:
            waits.observe(seconds)

    return observe
