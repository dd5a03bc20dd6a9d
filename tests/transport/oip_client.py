"""Triton's own Python client against a server, run under `.venv-peers/bin/python`.

tritonclient[grpc] needs protobuf < 7, so it cannot be imported beside Sidelight; the tests run
this script as a subprocess. It reads a plan from stdin:

    {"address": "127.0.0.1:PORT", "calls": {NAME: CALL, ...}}

and writes {NAME: RESULT, ...} as JSON to stdout. A CALL is one of

    {"call": "is_server_live" | "is_server_ready" | "get_server_metadata"}
    {"call": "is_model_ready" | "get_model_metadata", "model": M, "version": V}
    {"call": "infer", "model": M, "inputs": [{"name", "datatype", "array"}],
     "parameters": {...}, "outputs": [names], "id": ID, "timeout": seconds, "headers": {...}}
        tritonclient's InferInput / InferRequestedOutput API (raw contents), read back with
        InferResult.as_numpy
    {"call": "message", "request": {...}, "timeout": seconds}
        a ModelInferRequest built from its JSON form with tritonclient's own protobuf messages
        (tritonclient.grpc.service_pb2) and sent with its stub: typed contents, or anything
        the InferInput API would refuse to build

A RESULT is the answer (arrays as nested lists), or {"error": {"code", "message"}}.
Only numpy, grpc and tritonclient are imported: nothing of Sidelight.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1 << 28)]
TYPED_FIELDS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "UINT8": "uint_contents",
    "BOOL": "bool_contents",
}


def main() -> None:
    plan = json.load(sys.stdin)
    client = triton.InferenceServerClient(plan["address"])
    channel = grpc.insecure_channel(plan["address"], options=CHANNEL_OPTIONS)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    results = {name: run(client, stub, call) for name, call in plan["calls"].items()}
    json.dump(results, sys.stdout)


def run(client: Any, stub: Any, call: dict[str, Any]) -> Any:
    try:
        return answer(client, stub, call)
    except InferenceServerException as exc:
        return {"error": {"code": str(exc.status()).split(".")[-1], "message": exc.message()}}
    except grpc.RpcError as exc:
        return {"error": {"code": exc.code().name, "message": exc.details()}}


def answer(client: Any, stub: Any, call: dict[str, Any]) -> Any:
    kind = call["call"]
    if kind in ("is_server_live", "is_server_ready"):
        return getattr(client, kind)()
    if kind == "is_model_ready":
        return client.is_model_ready(call["model"], call.get("version", ""))
    if kind == "get_server_metadata":
        return json_format.MessageToDict(client.get_server_metadata())
    if kind == "get_model_metadata":
        metadata = client.get_model_metadata(call["model"], call.get("version", ""))
        return json_format.MessageToDict(metadata, preserving_proto_field_name=True)
    if kind == "infer":
        return infer(client, call)
    if kind == "message":
        request = json_format.ParseDict(call["request"], service_pb2.ModelInferRequest())
        return decoded(stub.ModelInfer(request, timeout=call.get("timeout", 60)))
    raise ValueError(f"unknown call {kind!r}")


def infer(client: Any, call: dict[str, Any]) -> dict[str, Any]:
    inputs = []
    for spec in call["inputs"]:
        array = np.array(spec["array"], dtype=triton_to_np_dtype(spec["datatype"]))
        tensor = triton.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(name) for name in call.get("outputs", [])]
    result = client.infer(
        call["model"],
        inputs,
        model_version=call.get("version", ""),
        outputs=outputs or None,
        request_id=call.get("id", ""),
        parameters=call.get("parameters") or None,
        client_timeout=call.get("timeout", 60),
        headers=call.get("headers"),
    )
    response = result.get_response()
    return {
        **header(response),
        "outputs": {
            o.name: {
                "datatype": o.datatype,
                "shape": list(o.shape),
                "data": result.as_numpy(o.name).tolist(),
            }
            for o in response.outputs
        },
    }


def decoded(response: Any) -> dict[str, Any]:
    """A response read by hand: raw contents when the server sent them, typed otherwise."""
    outputs = {}
    for index, output in enumerate(response.outputs):
        if response.raw_output_contents:
            flat = np.frombuffer(
                response.raw_output_contents[index], dtype=triton_to_np_dtype(output.datatype)
            )
        else:
            flat = np.array(getattr(output.contents, TYPED_FIELDS[output.datatype]))
        outputs[output.name] = {
            "datatype": output.datatype,
            "shape": list(output.shape),
            "data": flat.reshape(list(output.shape)).tolist(),
        }
    return {**header(response), "outputs": outputs}


def header(response: Any) -> dict[str, Any]:
    parameters = {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in response.parameters.items()
    }
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": parameters,
        "raw": len(response.raw_output_contents) > 0,
    }


if __name__ == "__main__":
    main()
