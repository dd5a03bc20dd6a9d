"""The schema of a remote model's `remote.yaml`, with errors that name the file and the field.

protocol: oip                  # oip: Open Inference Protocol gRPC (Triton, KServe, MLServer)
                               # torchserve: TorchServe's gRPC inference API
target: 127.0.0.1:8081         # the endpoint's gRPC host:port (plaintext)
model_name: credit             # the model's name on that server
model_version: ""              # "" for the server's default version
input_name: input-0            # oip: the name of the request's one input tensor
output_name: predict_proba     # oip: the output to ask for ("" for the first returned)
batch_rows: 64                 # rows per call at most
max_concurrency: 4             # calls in flight to this endpoint at most, from this process
timeout_seconds: 10.0          # deadline of one call (one attempt)
retries: 2                     # further attempts of a call that failed UNAVAILABLE or CANCELLED
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sidelight.models.config import read_mapping, validated

REMOTE_FILE = "remote.yaml"


class Protocol(StrEnum):
    OIP = "oip"
    TORCHSERVE = "torchserve"


class RemoteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol
    target: str
    model_name: str = Field(min_length=1)
    model_version: str = ""
    input_name: str = "input-0"
    output_name: str = ""
    batch_rows: int = Field(default=64, ge=1, le=65536)
    max_concurrency: int = Field(default=4, ge=1, le=256)
    timeout_seconds: float = Field(default=10.0, gt=0.0, le=3600.0)
    retries: int = Field(default=2, ge=0, le=20)

    @field_validator("target")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8081)")
        return value


def load_remote_config(path: Path) -> RemoteConfig:
    """Parse and validate `path`; ConfigError names the file and the field at fault."""
    return validated(RemoteConfig, read_mapping(path), path)
