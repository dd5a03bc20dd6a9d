"""A remote model behind the nn.Module call every method makes: torch in, torch out.

Forward passes only (the endpoint computes outside autograd), so a remote model offers no
capability: it serves Predict and the perturbation methods; gradient and CAM methods are
refused where the method is chosen (sidelight.methods.catalog), naming the local artifact to
configure instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import grpc
import numpy as np
import torch
from torch import nn

from sidelight.metrics import RemoteFigures
from sidelight.models.model import Model
from sidelight.models.remote.client import Endpoint, RemoteClient
from sidelight.models.remote.config import Protocol, RemoteConfig
from sidelight.models.remote.oip import OipEndpoint
from sidelight.models.remote.torchserve import TorchServeEndpoint

# Messages of a few thousand rows of images exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class RemoteModule(nn.Module):
    # No parameters, no hooks, and the client may be called from many threads: Model.private_copy
    # shares the module (and so one client, one concurrency bound per endpoint and process).
    shared_across_threads = True

    def __init__(self, client: RemoteClient) -> None:
        super().__init__()
        self.client = client

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().to("cpu").contiguous().numpy()  # R x input shape
        answer = self.client.infer(rows)  # R x classes
        # Raw answers are read-only views of the response's bytes: torch needs its own copy.
        answer = np.require(answer, requirements=["C_CONTIGUOUS", "WRITEABLE"])
        return torch.from_numpy(answer).to(x.device, x.dtype)


def open_remote(config: RemoteConfig, model: str, classes: int) -> RemoteModule:
    """A module calling the endpoint of `config`; no call is made here (the endpoint may be down
    while Sidelight starts: health and metrics report it, calls fail with RemoteModelError)."""
    channel = grpc.insecure_channel(
        config.target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Sidelight retries itself, only where safe (client.py): no second policy.
            ("grpc.enable_retries", 0),
        ],
    )
    endpoint: Endpoint = (
        OipEndpoint(config, channel)
        if config.protocol is Protocol.OIP
        else TorchServeEndpoint(config, channel)
    )
    return RemoteModule(RemoteClient(endpoint, config, model, classes))


def remote_client(model: Model) -> RemoteClient | None:
    """The client of a remote model; None for a local one."""
    return model.module.client if isinstance(model.module, RemoteModule) else None


def remote_clients(models: Iterable[Model]) -> dict[str, list[RemoteClient]]:
    """The clients of the remote ones among `models`, by model name (one per version and
    device)."""
    found: dict[str, list[RemoteClient]] = {}
    for model in models:
        client = remote_client(model)
        if client is not None:
            found.setdefault(model.name, []).append(client)
    return found


def remote_figures(clients: Mapping[str, Sequence[RemoteClient]]) -> list[RemoteFigures]:
    """What metrics.RemoteCollector reads at each scrape."""
    return [client.stats.figures() for group in clients.values() for client in group]
