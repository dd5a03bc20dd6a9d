"""Health of remote models: one gRPC health service name per remote model, probed periodically.

    sidelight.remote.<model>    SERVING while every version's endpoint says the model is ready
                                (OIP ModelReady; TorchServe Ping), NOT_SERVING otherwise

A remote endpoint that goes down fails that model's calls (UNAVAILABLE, naming the endpoint),
not the server: the Explainer service's readiness does not follow these names, so Kubernetes
keeps routing the local models' traffic to the pod. The same outcomes feed the
`sidelight_remote_up` gauge (sidelight.metrics.RemoteCollector).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from sidelight.models.remote.client import RemoteClient

log = logging.getLogger(__name__)

PROBE_PERIOD_S = 2.0
HEALTH_PREFIX = "sidelight.remote."


def health_name(model: str) -> str:
    return HEALTH_PREFIX + model


class RemoteHealth:
    def __init__(
        self, clients: Mapping[str, Sequence[RemoteClient]], servicer: health_aio.HealthServicer
    ) -> None:
        self._clients = clients
        self._servicer = servicer
        self._status: dict[str, bool] = {}

    async def run(self) -> None:
        """Probe every remote model now, then every PROBE_PERIOD_S, until cancelled."""
        while True:
            for model, clients in self._clients.items():
                ready = all([await asyncio.to_thread(client.probe) for client in clients])
                await self._set(model, ready)
            await asyncio.sleep(PROBE_PERIOD_S)

    async def _set(self, model: str, ready: bool) -> None:
        if self._status.get(model) == ready:
            return
        if model in self._status or not ready:
            log.warning("remote model %s: endpoint %s", model, "ready" if ready else "not ready")
        self._status[model] = ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._servicer.set(health_name(model), status)

    def close(self) -> None:
        for clients in self._clients.values():
            for client in clients:
                client.close()
