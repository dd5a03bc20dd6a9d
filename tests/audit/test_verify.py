"""Tampering with the database directly, in SQL, and the verifier naming what was done.

The log: records 1..12, appended in three batches, with checkpoints signed at seq 6 and 12.
Each case asserts the exact set of problem kinds, so that a case is not only detected but
named, and nothing else is claimed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from sidelight.audit.checkpoint import export_checkpoints, load_checkpoints
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore
from sidelight.audit.verify import ProblemKind, VerifyReport, verify

from . import support
from .support import make_record

RECORDS = 12


@pytest.fixture
def log(store: AuditStore, signer: Signer) -> AuditStore:
    store.append([make_record(n) for n in range(1, 5)])
    store.append([make_record(n) for n in range(5, 7)])
    with store.transaction() as transaction:
        signer.checkpoint(transaction)
    store.append([make_record(n) for n in range(7, RECORDS + 1)])
    with store.transaction() as transaction:
        signer.checkpoint(transaction)
    return store


def check(store: AuditStore, signer: Signer, **options: object) -> VerifyReport:
    return verify(store, signer.public_key, **options)  # type: ignore[arg-type]


def kinds(report: VerifyReport) -> set[ProblemKind]:
    return {problem.kind for problem in report.problems}


def at(report: VerifyReport, kind: ProblemKind) -> list[int | None]:
    return sorted((p.seq for p in report.problems if p.kind is kind), key=lambda s: s or 0)


def test_an_untouched_log_verifies(log: AuditStore, signer: Signer) -> None:
    report = check(log, signer, page_size=5)
    assert report.ok, report.problems
    assert report.records_checked == RECORDS
    assert (report.first_seq, report.last_seq) == (1, RECORDS)
    assert report.checkpoints_checked == 2
    assert report.last_checkpoint is not None and report.last_checkpoint.seq == RECORDS


def test_modified_content(log: AuditStore, signer: Signer) -> None:
    support.modify(log, 5)
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.MODIFIED}
    assert at(report, ProblemKind.MODIFIED) == [5]
    assert report.problems[0].record_id == "rec-00005"


def test_modified_with_its_hash_recomputed(log: AuditStore, signer: Signer) -> None:
    support.modify_rehashed(log, 4)  # the next record's prev_hash gives it away
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.MODIFIED}
    assert at(report, ProblemKind.MODIFIED) == [4]


def test_last_record_modified_with_head_and_hash_recomputed(
    log: AuditStore, signer: Signer
) -> None:
    digest = support.modify_rehashed(log, RECORDS)
    support.sql(log, "UPDATE audit_head SET hash = :hash", hash=digest)
    report = check(log, signer)  # only the checkpoint signed at 12 knows
    assert kinds(report) == {ProblemKind.MODIFIED}
    assert at(report, ProblemKind.MODIFIED) == [RECORDS]


def test_chain_rewritten_from_a_record_on(log: AuditStore, signer: Signer) -> None:
    support.rewrite_from(log, 3)  # every link consistent again: only signatures contradict
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.MODIFIED}
    assert at(report, ProblemKind.MODIFIED) == [6, RECORDS]


def test_swapped_attribution_blobs(log: AuditStore, signer: Signer) -> None:
    three, four = support.row(log, 3), support.row(log, 4)
    swap_blob = "UPDATE audit_records SET attributions = :blob WHERE seq = :seq"
    support.sql(log, swap_blob, blob=four.attributions, seq=3)
    support.sql(log, swap_blob, blob=three.attributions, seq=4)
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.MODIFIED}
    assert at(report, ProblemKind.MODIFIED) == [3, 4]
    assert "attributions" in report.problems[0].message


def test_a_column_changed_without_the_content(log: AuditStore, signer: Signer) -> None:
    support.sql(log, "UPDATE audit_records SET subject_id = 'someone' WHERE seq = 2")
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.MODIFIED}
    assert "subject_id" in report.problems[0].message


@pytest.mark.parametrize("seqs", [(5,), (7, 8, 9), (1,), (1, 2)])
def test_deleted(log: AuditStore, signer: Signer, seqs: tuple[int, ...]) -> None:
    support.delete(log, *seqs)
    report = check(log, signer, page_size=4)
    assert kinds(report) == {ProblemKind.DELETED}
    assert at(report, ProblemKind.DELETED) == [seqs[0]]


@pytest.mark.parametrize("pair", [(4, 5), (3, 9), (1, 3), (6, 7), (11, 12)])
def test_reordered(log: AuditStore, signer: Signer, pair: tuple[int, int]) -> None:
    support.swap(log, *pair)
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.REORDERED}
    assert pair[0] in at(report, ProblemKind.REORDERED)


def test_inserted_in_the_middle(log: AuditStore, signer: Signer) -> None:
    """A forged record linked to record 4, the rest moved up one seq to make room."""
    support.shift_up(log, 5)
    support.insert_raw(log, 5, support.row(log, 4).hash, make_record(99, caller="mallory"))
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.INSERTED}
    assert at(report, ProblemKind.INSERTED) == [5]


def test_inserted_in_the_middle_with_a_foreign_link(log: AuditStore, signer: Signer) -> None:
    support.shift_up(log, 5)
    support.insert_raw(log, 5, os.urandom(32), make_record(99))
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.INSERTED}
    assert at(report, ProblemKind.INSERTED) == [5]


@pytest.mark.parametrize("link", ["to_record_3", "random", "to_the_tail"])
def test_inserted_at_the_end(log: AuditStore, signer: Signer, link: str) -> None:
    prev_hash = {
        "to_record_3": support.row(log, 3).hash,
        "random": os.urandom(32),
        "to_the_tail": support.row(log, RECORDS).hash,  # a valid link: only the head knows
    }[link]
    support.insert_raw(log, RECORDS + 1, prev_hash, make_record(99))
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.INSERTED}
    assert at(report, ProblemKind.INSERTED) == [RECORDS + 1]


def test_inserted_before_the_start(log: AuditStore, signer: Signer) -> None:
    support.insert_raw(log, 0, os.urandom(32), make_record(0))
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.INSERTED}
    assert at(report, ProblemKind.INSERTED) == [0]


def test_truncated(log: AuditStore, signer: Signer) -> None:
    support.delete(log, 10, 11, 12)
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.TRUNCATED}
    assert at(report, ProblemKind.TRUNCATED) == [10]


def test_truncation_hidden_in_the_store_is_caught_by_the_exported_checkpoints(
    log: AuditStore, signer: Signer, tmp_path: Path
) -> None:
    exported = tmp_path / "escrow.jsonl"
    export_checkpoints(exported, log.checkpoints())
    # A thorough attacker: the tail, the checkpoints that mention it, and the head.
    support.delete(log, 10, 11, 12)
    support.sql(log, "DELETE FROM audit_checkpoints WHERE seq > 9")
    support.sql(log, "UPDATE audit_head SET seq = 9, hash = :h", h=support.row(log, 9).hash)
    assert check(log, signer).ok  # the store alone cannot tell
    report = verify(log, signer.public_key, load_checkpoints(exported))
    assert kinds(report) == {ProblemKind.TRUNCATED}
    assert at(report, ProblemKind.TRUNCATED) == [10]


def test_checkpoint_changed_after_signing(log: AuditStore, signer: Signer) -> None:
    support.delete(log, 10, 11, 12)
    support.sql(log, "UPDATE audit_checkpoints SET seq = 9, hash = :h WHERE seq = 12",
                h=support.row(log, 9).hash)  # fmt: skip
    support.sql(log, "UPDATE audit_head SET seq = 9, hash = :h", h=support.row(log, 9).hash)
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.BAD_SIGNATURE}


def test_checkpoint_signed_by_another_key(log: AuditStore, signer: Signer, tmp_path: Path) -> None:
    intruder = Signer.load_or_create(tmp_path / "intruder.pem")
    with log.transaction() as transaction:
        intruder.checkpoint(transaction)
    report = check(log, signer)
    assert kinds(report) == {ProblemKind.WRONG_KEY}


def test_a_rewritten_chain_signed_again_is_a_fork(log: AuditStore, signer: Signer) -> None:
    """The chain rewritten between checkpoints, then the writer signs the head it finds."""
    support.rewrite_from(log, 8)
    with log.transaction() as transaction:
        signer.checkpoint(transaction)
    report = check(log, signer)
    assert ProblemKind.FORKED in kinds(report)
    assert kinds(report) <= {ProblemKind.FORKED, ProblemKind.MODIFIED}


def test_a_fork_hidden_in_the_store_shows_against_the_export(
    log: AuditStore, signer: Signer, tmp_path: Path
) -> None:
    exported = tmp_path / "escrow.jsonl"
    export_checkpoints(exported, log.checkpoints())
    support.rewrite_from(log, 8)
    support.sql(log, "DELETE FROM audit_checkpoints WHERE seq = 12")
    with log.transaction() as transaction:
        signer.checkpoint(transaction)
    assert check(log, signer).ok
    report = verify(log, signer.public_key, load_checkpoints(exported))
    assert kinds(report) == {ProblemKind.MODIFIED, ProblemKind.FORKED}
    assert at(report, ProblemKind.MODIFIED) == [RECORDS]  # the exported checkpoint prevails


def test_problems_beyond_the_cap_are_counted(log: AuditStore, signer: Signer) -> None:
    for seq in range(1, RECORDS + 1):
        support.modify(log, seq)
    report = check(log, signer, max_problems=5)
    assert len(report.problems) == 5
    assert report.more_problems == RECORDS - 5
    assert not report.ok


def test_verify_reads_a_snapshot_while_others_append(log: AuditStore, signer: Signer) -> None:
    """Records appended while the verifier pages through are neither half-seen nor blamed."""
    with log.reader() as reader:
        seen = []
        for raw in reader.raw_records(page_size=3):
            if raw.seq == 4:
                log.append([make_record(n) for n in range(100, 110)])
            seen.append(raw.seq)
        assert seen == list(range(1, RECORDS + 1))
        assert reader.head().seq == RECORDS
    assert check(log, signer).ok


def test_link_hash_is_sha256_of_prev_and_content() -> None:
    from sidelight.audit.chain import GENESIS, link_hash

    record = make_record(1)
    assert hashlib.sha256(b"sidelight-audit-v1").digest() == GENESIS
    expected = hashlib.sha256(GENESIS + record.canonical_content()).digest()
    assert link_hash(GENESIS, record) == expected
    assert link_hash(GENESIS, make_record(1, caller="x")) != expected


def test_an_empty_store_verifies(store: AuditStore, signer: Signer) -> None:
    with store.transaction() as transaction:
        signer.checkpoint(transaction)  # of the empty head
    report = check(store, signer)
    assert report.ok, report.problems
    assert report.records_checked == 0
