"""A test-only TorchServe handler that follows the body contract of Sidelight's remote client
(sidelight.models.remote.torchserve): each request's "body" (or "data") is JSON
{"instances": [rows]}, its answer JSON {"predictions": [[outputs], ...]}, one per row. It runs
the archive's TorchScript file in float64 and imports nothing of Sidelight (it runs inside
TorchServe's worker). Sidelight's own TorchServe handler follows the same contract."""

from __future__ import annotations

import json
import os
from typing import Any

import torch


class BodyContractHandler:
    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        folder = context.system_properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(folder, serialized), map_location="cpu")
        self.model.eval()
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        answers = []
        for request in data:  # one entry per request TorchServe put in this batch
            body = request.get("body") or request.get("data")
            if isinstance(body, bytes | bytearray):
                body = json.loads(body)
            rows = torch.tensor(body["instances"], dtype=torch.float64)
            with torch.no_grad():
                outputs = self.model(rows)
            answers.append(json.dumps({"predictions": outputs.tolist()}))
        return answers
