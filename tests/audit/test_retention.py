"""Retention removes the chain's oldest records under a signed anchor: what remains still
verifies, tampering with it is still caught, and retention faked by hand is not believed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sidelight.audit.chain import Anchor
from sidelight.audit.checkpoint import export_checkpoints, load_checkpoints
from sidelight.audit.record import AuditRecord, RecordKind
from sidelight.audit.retention import prune
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore
from sidelight.audit.verify import ProblemKind, VerifyReport, verify

from . import support
from .support import BASE_TIME, make_record

RECORDS = 12


@pytest.fixture
def log(store: AuditStore, signer: Signer) -> AuditStore:
    store.append([make_record(n) for n in range(1, RECORDS + 1)])
    with store.transaction() as transaction:
        signer.checkpoint(transaction)
    return store


def kinds(report: VerifyReport) -> set[ProblemKind]:
    return {problem.kind for problem in report.problems}


def test_prune_then_verify(log: AuditStore, signer: Signer) -> None:
    hash_before_first_kept = support.row(log, 6).prev_hash
    result = prune(log, signer, cutoff=BASE_TIME + 5.5)  # records 1..5 are older
    assert (result.removed, result.first_kept_seq) == (5, 6)
    assert result.record is not None and result.checkpoint is not None
    assert result.record.seq == RECORDS + 1
    assert result.record.record.kind is RecordKind.RETENTION
    assert result.record.record.details == {
        "cutoff": BASE_TIME + 5.5,
        "removed": 5,
        "first_kept_seq": 6,
    }
    assert result.checkpoint.checkpoint.anchor == Anchor(6, hash_before_first_kept)
    assert result.checkpoint.checkpoint.seq == RECORDS + 1
    assert log.count() == RECORDS - 5 + 1
    report = verify(log, signer.public_key)
    assert report.ok, report.problems
    assert (report.first_seq, report.last_seq) == (6, RECORDS + 1)


def test_prune_twice_and_by_age(log: AuditStore, signer: Signer) -> None:
    prune(log, signer, cutoff=BASE_TIME + 3.5)
    log.append([make_record(n) for n in range(20, 23)])  # seqs 14..16, made long ago
    # Only a prefix goes: the first retention record (made now) stops it, and keeps what follows.
    second = prune(log, signer, cutoff=BASE_TIME + 21.5)
    assert (second.removed, second.first_kept_seq) == (RECORDS - 3, RECORDS + 1)
    assert verify(log, signer.public_key).ok
    third = prune(log, signer, older_than_s=0.0)  # everything made before now
    assert third.first_kept_seq == RECORDS + 6  # past the head: all removed
    assert log.count() == 1
    report = verify(log, signer.public_key)
    assert report.ok, report.problems


def test_prune_everything(log: AuditStore, signer: Signer) -> None:
    result = prune(log, signer, cutoff=BASE_TIME + 1000)
    assert (result.removed, result.first_kept_seq) == (RECORDS, RECORDS + 1)
    assert log.count() == 1
    assert verify(log, signer.public_key).ok


def test_nothing_old_enough(log: AuditStore, signer: Signer) -> None:
    result = prune(log, signer, cutoff=BASE_TIME)
    assert (result.removed, result.record, result.checkpoint) == (0, None, None)
    assert log.count() == RECORDS


def test_exactly_one_cutoff(log: AuditStore, signer: Signer) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        prune(log, signer)
    with pytest.raises(ValueError, match="exactly one"):
        prune(log, signer, cutoff=1.0, older_than_s=1.0)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda store: support.delete(store, 8), ProblemKind.DELETED),
        (lambda store: support.delete(store, 6), ProblemKind.DELETED),
        (lambda store: support.modify(store, 9), ProblemKind.MODIFIED),
        (lambda store: support.modify_rehashed(store, 7), ProblemKind.MODIFIED),
        (lambda store: support.swap(store, 7, 10), ProblemKind.REORDERED),
        (lambda store: support.delete(store, RECORDS + 1), ProblemKind.TRUNCATED),
    ],
)
def test_tampering_after_prune_is_caught(
    log: AuditStore, signer: Signer, tamper: object, expected: ProblemKind
) -> None:
    prune(log, signer, cutoff=BASE_TIME + 5.5)
    tamper(log)  # type: ignore[operator]
    assert kinds(verify(log, signer.public_key)) == {expected}


def test_retention_faked_by_hand_is_not_believed(
    log: AuditStore, signer: Signer, tmp_path: Path
) -> None:
    support.delete(log, 1, 2, 3, 4)
    log.append(  # the forger can link a record, but not sign an anchor
        [
            AuditRecord(
                record_id="fake-retention",
                kind=RecordKind.RETENTION,
                time=BASE_TIME + 100,
                details={"cutoff": BASE_TIME + 4.5, "removed": 4, "first_kept_seq": 5},
            )
        ]
    )
    intruder = Signer.load_or_create(tmp_path / "intruder.pem")
    anchor = Anchor(5, support.row(log, 5).prev_hash)
    with log.transaction() as transaction:
        intruder.checkpoint(transaction, anchor=anchor)
    report = verify(log, signer.public_key)
    assert kinds(report) == {
        ProblemKind.DELETED,
        ProblemKind.UNSIGNED_RETENTION,
        ProblemKind.WRONG_KEY,
    }
    assert [p.seq for p in report.problems if p.kind is ProblemKind.DELETED] == [1]


def test_pruned_log_checked_against_exported_checkpoints(
    log: AuditStore, signer: Signer, tmp_path: Path
) -> None:
    prune(log, signer, cutoff=BASE_TIME + 5.5)
    exported = tmp_path / "escrow.jsonl"
    export_checkpoints(exported, log.checkpoints())
    support.sql(log, "DELETE FROM audit_checkpoints")  # the store's own anchor is gone
    assert ProblemKind.DELETED in kinds(verify(log, signer.public_key))
    report = verify(log, signer.public_key, load_checkpoints(exported))
    assert report.ok, report.problems
