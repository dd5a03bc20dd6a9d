"""The real server on a free port answers the three RPCs."""

from __future__ import annotations

import grpc
import numpy as np
from sidelight.client import explain_request, to_array
from sidelight.v1 import explainer_pb2 as pb
from sidelight.v1 import explainer_pb2_grpc as pb_grpc


def test_list_predict_explain(channel: grpc.Channel) -> None:
    stub = pb_grpc.ExplainerStub(channel)
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert {"digits", "breast_cancer", "tiny_torchscript"} <= set(models)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    reply = stub.Explain(explain_request("digits", x, "grad_cam"))
    assert list(reply.attributions.shape) == [3, 1, 8, 8]
    assert to_array(reply.outputs).sum(1) == __import__("pytest").approx(np.ones(3), abs=1e-5)
