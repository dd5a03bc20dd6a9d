"""Verify, then sign: `sidelight audit verify --sign`, the run a CronJob makes.

`verify_and_sign(store, signer)` verifies the whole chain in one snapshot and, only when it
verifies, signs a checkpoint of exactly the head the verification walked to: the seq and hash
it checked, not the head that live writers have moved on to since. So a checkpoint signed this
way covers only a segment that was just re-verified; the records appended meanwhile are covered
by the writers' own checkpoints and by the next run. Nothing is signed when the log does not
verify, nor when it holds no record.

The checkpoint's anchor is the start the verification accepted (the first record's seq and the
hash it links to), which a checkpoint signed by the trusted key (or GENESIS) already attests:
signing it never vouches for a start nobody signed before. Retention may remove a prefix
between the snapshot and the signing; the signing transaction holds the head lock (as retention
does) and reads the chain's first stored seq again: if it moved, the verification runs again,
a few times at most, after which nothing is signed and the outcome says why.

Every run's outcome is stored (`audit_verifications`; in the checkpoint's own transaction when
one is signed) and read by the server at each scrape (`VerificationCollector`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sidelight.audit.checkpoint import SignedCheckpoint
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore, VerificationRun
from sidelight.audit.verify import VerifyReport, verify

_ATTEMPTS = 3  # verifications in a row that retention may overtake before giving up


@dataclass(frozen=True)
class SignedVerification:
    report: VerifyReport
    run: VerificationRun  # as stored
    checkpoint: SignedCheckpoint | None  # None: nothing signed (see `unsigned_because`)
    unsigned_because: str = ""  # why a log that verified got no checkpoint


def verify_and_sign(
    store: AuditStore,
    signer: Signer,
    checkpoints: Iterable[SignedCheckpoint] = (),
) -> SignedVerification:
    """Verify the whole chain against `signer`'s public key, the store's checkpoints and the
    extra `checkpoints` given; sign the verified head if it verifies; store the outcome."""
    extra = list(checkpoints)
    for _ in range(_ATTEMPTS):
        report = verify(store, signer.public_key, extra)
        run = _run(report)
        if not report.ok or report.tip is None:
            store.add_verification(run)
            because = "" if not report.ok else "the log holds no record"
            return SignedVerification(report, run, None, because)
        with store.transaction() as transaction:
            if transaction.first_seq() != report.first_seq:
                continue  # retention removed records since the snapshot: verify again
            signed = signer.checkpoint(transaction, head=report.tip, anchor=report.start)
            run = _run(report, signed.checkpoint.seq)
            transaction.add_verification(run)
            return SignedVerification(report, run, signed)
    store.add_verification(run)
    return SignedVerification(
        report,
        run,
        None,
        f"retention moved the chain's start during each of {_ATTEMPTS} verifications",
    )


def _run(report: VerifyReport, checkpoint_seq: int | None = None) -> VerificationRun:
    return VerificationRun(
        time=time.time(),
        ok=report.ok,
        first_seq=report.first_seq,
        last_seq=report.last_seq,
        records_checked=report.records_checked,
        problems=len(report.problems) + report.more_problems,
        checkpoint_seq=checkpoint_seq,
    )
