"""Retention: removing the oldest records without breaking what can be verified.

A hash chain forbids removing records, and retention must (GDPR's storage limitation, after
the AI Act's minimum of six months). `prune` removes the chain's prefix of records made before
a cutoff (the records before the first one made at or after it), and in the same transaction:

1. appends a RETENTION record (details: cutoff, removed count, first kept seq), linked to the
   head like any other;
2. signs a checkpoint of the new head whose anchor is (first kept seq, the hash that record
   links to): the signer's word that the chain now legitimately starts there.

The verifier starts the chain at an anchor only if a checkpoint signed by the trusted key says
so; every later checkpoint carries the anchor over. Records deleted by hand and passed off as
retention, even with a RETENTION record forged at the end of the chain, have no signed anchor
and are reported as deleted.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sidelight.audit.chain import Anchor
from sidelight.audit.checkpoint import SignedCheckpoint
from sidelight.audit.record import AuditRecord, RecordKind
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore, StoredRecord


@dataclass(frozen=True)
class PruneResult:
    cutoff: float
    removed: int
    first_kept_seq: int
    record: StoredRecord | None  # the RETENTION record; None when nothing was old enough
    checkpoint: SignedCheckpoint | None  # the anchoring checkpoint; None likewise


def prune(
    store: AuditStore,
    signer: Signer,
    *,
    older_than_s: float | None = None,
    cutoff: float | None = None,
) -> PruneResult:
    """Remove the records made before `cutoff` (seconds since the epoch), or before
    `older_than_s` seconds ago: exactly one of the two."""
    now = time.time()
    if cutoff is None and older_than_s is not None:
        cutoff = now - older_than_s
    elif cutoff is None or older_than_s is not None:
        raise ValueError("give exactly one of older_than_s and cutoff")
    with store.transaction() as transaction:
        tip = transaction.head()
        first_kept = transaction.first_seq_since(cutoff) or tip.seq + 1
        first_stored = transaction.first_seq()
        if first_stored is None or first_kept <= first_stored:
            return PruneResult(cutoff, 0, first_stored or first_kept, None, None)
        kept = transaction.at(first_kept)
        anchor = Anchor(first_kept, kept.prev_hash if kept is not None else tip.hash)
        removed = transaction.delete_before(first_kept)
        [stored] = transaction.append(
            [
                AuditRecord(
                    record_id=uuid.uuid4().hex,
                    kind=RecordKind.RETENTION,
                    time=now,
                    details={"cutoff": cutoff, "removed": removed, "first_kept_seq": first_kept},
                )
            ]
        )
        signed = signer.checkpoint(transaction, anchor=anchor)
    return PruneResult(cutoff, removed, first_kept, stored, signed)
