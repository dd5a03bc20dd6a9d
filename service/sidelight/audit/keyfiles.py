"""Secret files in the data directory: the checkpoint signing key and the master key that
wraps the subjects' keys. Created once with mode 0600, then only read.

Several processes may start at once against one data directory: each writes its candidate to
a private temporary file and links it into place, so exactly one wins, the others read the
winner's, and nobody ever reads a half-written key.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The contents of `path`, after creating it from `make()` (mode 0600) if it is absent."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    partial = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(make())
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process linked its key first
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    _sync_folder(path.parent)  # the new name survives a crash, or another key would be made
    return path.read_bytes()


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
