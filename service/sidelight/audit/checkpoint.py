"""Checkpoints: signed statements of the chain's head, kept inside and outside the store.

A checkpoint says "at `time`, record `seq` had hash `hash`, and the chain started at
`anchor`", as canonical JSON signed with the server's Ed25519 key (`sidelight.audit.signing`).
Whoever edits the database can recompute hashes, but cannot sign, so a checkpoint pins the
whole history up to its seq:

- a record at or before `seq` changed, even with every later hash recomputed: the hash at `seq`
  no longer matches;
- records after `seq` cut off the end (truncation): `seq` lies beyond the last stored record;
- a prefix deleted and passed off as retention: no signed anchor starts the chain there.

Checkpoints live in the store's `audit_checkpoints` table, where whoever can rewrite the log can
also delete them; exported to a JSON-lines file (`export_checkpoints`) and kept elsewhere
(another account, a WORM bucket, a witness), they still catch what was done after the export.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidelight.audit.chain import Anchor
from sidelight.audit.record import canonical_json

# Domain separation: a signature over a checkpoint can never pass for one over anything else.
PAYLOAD_TYPE = "sidelight-audit-checkpoint-v1"


@dataclass(frozen=True)
class Checkpoint:
    seq: int  # the head's seq when signed (0: nothing written yet)
    hash: bytes  # the head's hash
    time: float  # seconds since the epoch, UTC
    anchor: Anchor  # where the stored chain starts

    def payload(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_json(
            {
                "type": PAYLOAD_TYPE,
                "seq": self.seq,
                "hash": self.hash.hex(),
                "time": self.time,
                "anchor": {"seq": self.anchor.seq, "prev_hash": self.anchor.prev_hash.hex()},
            }
        )


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    key_id: str  # SHA-256 of the raw public key, hex
    signature: bytes  # Ed25519 over checkpoint.payload()

    def to_json(self) -> str:
        """One line of an exported checkpoint file."""
        data: dict[str, Any] = json.loads(self.checkpoint.payload())
        data["key_id"] = self.key_id
        data["signature"] = base64.b64encode(self.signature).decode()
        return canonical_json(data).decode()

    @classmethod
    def from_json(cls, line: str) -> SignedCheckpoint:
        data = json.loads(line)
        if data.get("type") != PAYLOAD_TYPE:
            raise ValueError(f"not a Sidelight audit checkpoint: type {data.get('type')!r}")
        anchor = data["anchor"]
        return cls(
            checkpoint=Checkpoint(
                seq=int(data["seq"]),
                hash=bytes.fromhex(data["hash"]),
                time=float(data["time"]),
                anchor=Anchor(int(anchor["seq"]), bytes.fromhex(anchor["prev_hash"])),
            ),
            key_id=str(data["key_id"]),
            signature=base64.b64decode(data["signature"], validate=True),
        )


def export_checkpoints(path: Path, checkpoints: Iterable[SignedCheckpoint]) -> int:
    """Write `checkpoints` to `path` as JSON lines, replacing it atomically (a reader sees the
    old file or the new one, never half of one). Returns how many were written."""
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            for signed in checkpoints:
                out.write(signed.to_json() + "\n")
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return count


def load_checkpoints(path: Path) -> list[SignedCheckpoint]:
    """Read a file written by `export_checkpoints`. A malformed line raises ValueError naming
    it: an exported file is evidence, and is not silently skipped in part."""
    loaded = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                loaded.append(SignedCheckpoint.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a signed checkpoint: {exc}") from exc
    return loaded
