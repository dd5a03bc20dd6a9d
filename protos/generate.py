"""Generate the Python stubs for protos/sidelight/**/*.proto into service/ (or another root):
Sidelight's own contract (sidelight/v1), the Open Inference Protocol it serves and calls
(sidelight/oip) and TorchServe's gRPC inference API it calls (sidelight/torchserve).

`make protos` runs this; tests/unit/test_protos.py runs it into a temporary folder and fails when
the committed stubs differ, so that the stubs can never be stale against the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> None:
    """Write each proto's _pb2.py, .pyi and _pb2_grpc.py under out_root/sidelight/."""
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent / "service")
