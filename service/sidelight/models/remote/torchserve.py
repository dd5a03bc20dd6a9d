"""Calls of a model served by TorchServe, over its gRPC inference API: Predictions with the rows
as the body the Sidelight TorchServe handler reads, Ping for health.

The body contract (fixed with sidelight_handlers' TorchServe entry point): the request's input
"body" holds JSON {"instances": [rows, nested in the input shape]}; the prediction holds JSON
{"predictions": [[class probabilities or logits], ...]}, one per row, in order. JSON's decimal
floats round-trip float64 exactly (Python writes the shortest repr that reads back the same).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
from google.protobuf import empty_pb2

from sidelight.models.remote.client import BadResponse
from sidelight.models.remote.config import RemoteConfig
from sidelight.torchserve import inference_pb2 as pb
from sidelight.torchserve import inference_pb2_grpc as pb_grpc

BODY_KEY = "body"


class TorchServeEndpoint:
    def __init__(self, config: RemoteConfig, channel: grpc.Channel) -> None:
        self._config = config
        self._channel = channel
        self._stub = pb_grpc.InferenceAPIsServiceStub(channel)  # type: ignore[no-untyped-call]

    def infer(self, rows: np.ndarray, timeout: float) -> np.ndarray:
        body = json.dumps({"instances": rows.tolist()}).encode()
        request = pb.PredictionsRequest(
            model_name=self._config.model_name,
            model_version=self._config.model_version,
            input={BODY_KEY: body},
        )
        response = self._stub.Predictions(request, timeout=timeout)
        return _predictions(response.prediction, rows.dtype)

    def ready(self, timeout: float) -> bool:
        health = self._stub.Ping(empty_pb2.Empty(), timeout=timeout).health
        try:
            status = json.loads(health).get("status")
        except (ValueError, AttributeError):
            return False
        return bool(status == "Healthy")

    def close(self) -> None:
        self._channel.close()


def _predictions(prediction: bytes, dtype: np.dtype[Any]) -> np.ndarray:
    try:
        found = json.loads(prediction)["predictions"]
        return np.asarray(found, dtype=dtype)
    except (ValueError, KeyError, TypeError) as exc:
        shown = prediction[:200].decode(errors="replace")
        raise BadResponse(f'answered {shown!r}, not JSON {{"predictions": [[...], ...]}}') from exc
