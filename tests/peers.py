"""Where the real peer servers and clients of the integration tests are, or how to get them.

TorchServe and its archiver install into Sidelight's own venv (the `test` extra); MLServer and
Triton's gRPC client need protobuf < 7 and live in `.venv-peers` (`make peers`). A test that
cannot find what it needs fails with the command that installs it: it never passes silently.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"


def peer_python() -> Path:
    """The interpreter of `.venv-peers`, which runs MLServer and tritonclient."""
    python = PEERS_VENV / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{python} is missing: run `make peers` (MLServer, tritonclient[grpc])")
    return python


def peer_command(name: str) -> Path:
    """A console script of `.venv-peers`, e.g. `mlserver`."""
    command = PEERS_VENV / "bin" / name
    if not command.is_file():
        pytest.fail(f"{command} is missing: run `make peers`")
    return command


def venv_command(name: str) -> Path:
    """A console script of Sidelight's own venv, e.g. `torchserve` (the `test` extra)."""
    command = Path(sys.executable).parent / name
    if not command.is_file():
        pytest.fail(
            f"{command} is missing: run `.venv/bin/pip install -c constraints.txt -e '.[test]'`"
        )
    return command


def java() -> str:
    """TorchServe's frontend runs on Java 17."""
    found = shutil.which("java")
    if found is None:
        pytest.fail("java is missing: `apt-get install openjdk-17-jre-headless` (or `make java`)")
    return found
