"""Whether the server takes traffic, told the same way on every surface that asks.

The standard health service reports it for each service served (`sidelight.v1.Explainer`,
`inference.GRPCInferenceService`; the empty service name is liveness and stays SERVING while
the process answers); the Open Inference Protocol's ServerReady and ModelReady read `ready`.
Not ready while shutting down.

The jobs have a readiness of their own, under a service name of their own
(`sidelight.v1.Explainer.jobs`): NOT_SERVING while the job queue's Redis does not answer. The
server's readiness does not follow it: synchronous Predict and Explain need no Redis, and a
probe that pulled every pod out of the Service when Redis went down would stop them too.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness:
    def __init__(
        self,
        health: health_aio.HealthServicer,
        services: tuple[str, ...],
        jobs_service: str | None = None,
    ) -> None:
        self._health = health
        self._services = services
        self._jobs_service = jobs_service
        self._ready = False
        self._jobs_ready = False
        self._stopping = False

    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping

    async def set(self, ready: bool) -> None:
        """Serving (or not) as far as the dependencies go; stays not ready once stopping."""
        self._ready = ready
        if not self._stopping:
            for service in self._services:
                await self._health.set(service, SERVING if ready else NOT_SERVING)

    @property
    def jobs_ready(self) -> bool:
        return self._jobs_ready and not self._stopping

    async def set_jobs(self, ready: bool) -> None:
        """Whether jobs can be submitted and read (the job queue answers)."""
        self._jobs_ready = ready
        if not self._stopping and self._jobs_service is not None:
            await self._health.set(self._jobs_service, SERVING if ready else NOT_SERVING)

    async def stop(self) -> None:
        """Every service NOT_SERVING, for good: the server is shutting down."""
        self._stopping = True
        await self._health.enter_graceful_shutdown()
