"""The hash chain that makes the audit log tamper-evident.

Every record gets a consecutive `seq` (1, 2, 3, …) and two hashes:

    prev_hash(1)  = GENESIS
    hash(n)       = SHA-256(prev_hash(n) || canonical_content(n))
    prev_hash(n+1) = hash(n)

so each record's hash covers every record before it. Editing a record's content changes its
hash (caught by recomputing it); recomputing that hash too breaks the next record's
`prev_hash`; rewriting every hash from there to the end leaves a consistent chain that only a
signed checkpoint of an earlier head can contradict (`sidelight.audit.checkpoint`). Deleting,
reordering or inserting records breaks links the same way. The chain alone cannot show that
records were cut off the end: the head a checkpoint signed, beyond the last stored record, can.

An `Anchor` says where the stored chain legitimately starts: `seq` 1 after GENESIS, or, once
retention has removed a prefix (`sidelight.audit.retention`), the first kept record and the
hash it links to, as a signed checkpoint attests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sidelight.audit.record import AuditRecord

GENESIS = hashlib.sha256(b"sidelight-audit-v1").digest()


@dataclass(frozen=True)
class Head:
    """The last record of the chain: its seq (0 when nothing was ever written) and hash."""

    seq: int
    hash: bytes


@dataclass(frozen=True)
class Anchor:
    """Where the stored chain starts: the first record's seq and the hash it links to."""

    seq: int
    prev_hash: bytes


EMPTY_HEAD = Head(0, GENESIS)
GENESIS_ANCHOR = Anchor(1, GENESIS)


def link_content(prev_hash: bytes, canonical_content: bytes) -> bytes:
    """The hash of a record whose canonical content is stored as `canonical_content`."""
    return hashlib.sha256(prev_hash + canonical_content).digest()


def link_hash(prev_hash: bytes, record: AuditRecord) -> bytes:
    return link_content(prev_hash, record.canonical_content())
