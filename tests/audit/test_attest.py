"""`verify --sign` (sidelight.audit.attest), on SQLite and a real PostgreSQL: a checkpoint of
exactly the head the verification walked to, even while writers append; nothing signed when
the chain does not verify; every run's outcome stored, and exported by the collector."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sidelight.audit import attest
from sidelight.audit.chain import GENESIS_ANCHOR, Anchor
from sidelight.audit.checkpoint import SignedCheckpoint
from sidelight.audit.log import VerificationCollector
from sidelight.audit.retention import prune
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore, VerificationRun
from sidelight.audit.verify import VerifyReport, verify
from sidelight.cli import main
from sidelight.errors import AuditUnavailable
from sqlalchemy import inspect

from . import support
from .support import BASE_TIME, make_record

RECORDS = 12


@pytest.fixture
def log(store: AuditStore, signer: Signer) -> AuditStore:
    store.append([make_record(n) for n in range(1, 7)])
    with store.transaction() as transaction:
        signer.checkpoint(transaction)
    store.append([make_record(n) for n in range(7, RECORDS + 1)])
    return store


@pytest.fixture
def other_process(store_url: str) -> Iterator[AuditStore]:
    """A second store on the same database: another replica's writer."""
    opened = AuditStore.open(store_url)
    yield opened
    opened.close()


def test_signs_the_head_it_verified_and_records_the_run(log: AuditStore, signer: Signer) -> None:
    outcome = attest.verify_and_sign(log, signer)
    assert outcome.report.ok and outcome.checkpoint is not None
    checkpoint = outcome.checkpoint.checkpoint
    assert checkpoint.seq == RECORDS
    assert checkpoint.hash == bytes(support.row(log, RECORDS).hash)
    assert checkpoint.anchor == GENESIS_ANCHOR
    assert outcome.checkpoint in log.checkpoints()
    run = log.last_verification()
    assert run == outcome.run
    assert (run.ok, run.first_seq, run.last_seq, run.records_checked) == (True, 1, RECORDS, 12)
    assert (run.problems, run.checkpoint_seq) == (0, RECORDS)
    # A plain verification afterwards believes the new checkpoint.
    report = verify(log, signer.public_key)
    assert report.ok, report.problems
    assert report.last_checkpoint == checkpoint


def test_a_tampered_chain_signs_nothing_and_is_recorded_failed(
    log: AuditStore, signer: Signer
) -> None:
    support.modify(log, 5)  # a stored record's bytes changed, its hash left alone
    before = log.checkpoints()
    outcome = attest.verify_and_sign(log, signer)
    assert not outcome.report.ok and outcome.checkpoint is None
    assert log.checkpoints() == before
    run = log.last_verification()
    assert run is not None and not run.ok
    assert run.problems >= 1 and run.checkpoint_seq is None and run.last_seq == RECORDS
    assert scrape(log)["sidelight_audit_last_verification_success"] == 0.0


def test_a_writer_appending_after_the_verification_is_not_signed_for(
    log: AuditStore, signer: Signer, other_process: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the snapshot and the signing transaction another replica appends: the
    checkpoint still names the seq and hash that were verified, not the new head."""

    def verify_then_append(*args: Any, **kwargs: Any) -> VerifyReport:
        report = verify(*args, **kwargs)
        other_process.append([make_record(n) for n in range(100, 110)])
        return report

    monkeypatch.setattr(attest, "verify", verify_then_append)
    outcome = attest.verify_and_sign(log, signer)
    assert outcome.checkpoint is not None
    assert outcome.checkpoint.checkpoint.seq == RECORDS
    assert outcome.checkpoint.checkpoint.hash == bytes(support.row(log, RECORDS).hash)
    assert log.head().seq == RECORDS + 10
    assert verify(log, signer.public_key).ok


def test_signing_while_a_writer_appends_signs_only_verified_heads(
    log: AuditStore, signer: Signer, other_process: AuditStore
) -> None:
    """A real writer thread appending throughout: every checkpoint matches its record, and
    the log verifies at the end."""
    stop = threading.Event()
    appended = []

    def write() -> None:
        n = 1000
        while not stop.is_set():
            other_process.append([make_record(m) for m in range(n, n + 5)])
            appended.append(n)
            n += 5

    writer = threading.Thread(target=write)
    writer.start()
    try:
        signed = [attest.verify_and_sign(log, signer).checkpoint for _ in range(4)]
    finally:
        stop.set()
        writer.join(30)
    assert appended, "the writer never appended"
    for checkpoint in signed:
        assert checkpoint is not None
        seq = checkpoint.checkpoint.seq
        assert checkpoint.checkpoint.hash == bytes(support.row(log, seq).hash)
    assert log.head().seq > RECORDS
    report = verify(log, signer.public_key)
    assert report.ok, report.problems


def test_retention_during_the_verification_makes_it_verify_again(
    log: AuditStore, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records removed between the snapshot and the signing: the verified start is gone, so
    the chain is verified again and the checkpoint carries retention's anchor."""
    calls: list[VerifyReport] = []

    def verify_then_prune(*args: Any, **kwargs: Any) -> VerifyReport:
        report = verify(*args, **kwargs)
        if not calls:
            prune(log, signer, cutoff=BASE_TIME + 5.5)  # records 1..5 go
        calls.append(report)
        return report

    monkeypatch.setattr(attest, "verify", verify_then_prune)
    outcome = attest.verify_and_sign(log, signer)
    assert [report.first_seq for report in calls] == [1, 6]
    assert outcome.checkpoint is not None
    assert outcome.checkpoint.checkpoint.seq == RECORDS + 1  # the RETENTION record
    assert outcome.checkpoint.checkpoint.anchor == Anchor(6, bytes(support.row(log, 6).prev_hash))
    assert verify(log, signer.public_key).ok


def test_an_empty_log_is_recorded_verified_and_nothing_is_signed(
    store: AuditStore, signer: Signer
) -> None:
    outcome = attest.verify_and_sign(store, signer)
    assert outcome.report.ok and outcome.checkpoint is None
    assert outcome.unsigned_because == "the log holds no record"
    assert store.checkpoints() == []
    run = store.last_verification()
    assert run is not None and run.ok and run.last_seq is None


def test_a_store_made_before_the_table_opens_and_gains_it(store_url: str) -> None:
    made = AuditStore.open(store_url)
    made.append([make_record(1)])
    support.sql(made, "DROP TABLE audit_verifications")
    made.close()
    # Opened for reading (a regulator's copy), nothing is added.
    reading = AuditStore.open(store_url, create=False)
    try:
        with reading.engine.connect() as connection:
            assert not inspect(connection).has_table("audit_verifications")
        assert reading.count() == 1
    finally:
        reading.close()
    reopened = AuditStore.open(store_url)
    try:
        assert reopened.last_verification() is None
        run = VerificationRun(BASE_TIME, True, 1, 1, 1, 0, None)
        reopened.add_verification(run)
        assert reopened.last_verification() == run
    finally:
        reopened.close()


# -- the collector ---------------------------------------------------------------------------


def scrape(store: AuditStore, **options: Any) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(VerificationCollector(store.last_verification, cache_s=0.0, **options))
    return {sample.name: sample.value for metric in registry.collect() for sample in metric.samples}


def test_the_collector_exports_the_last_run(log: AuditStore, signer: Signer) -> None:
    assert scrape(log) == {}  # never verified: absent, not 0
    outcome = attest.verify_and_sign(log, signer)
    figures = scrape(log)
    assert figures == {
        "sidelight_audit_last_verification_success": 1.0,
        "sidelight_audit_last_verification_timestamp_seconds": outcome.run.time,
        "sidelight_audit_last_verified_seq": float(RECORDS),
    }


def test_the_collector_reads_the_store_once_per_period_and_survives_its_absence() -> None:
    reads = []
    now = [0.0]
    down = [False]

    def last_run() -> VerificationRun:
        reads.append(now[0])
        if down[0]:
            raise AuditUnavailable("audit store sqlite:///x is unavailable: gone")
        return VerificationRun(BASE_TIME, True, 1, 9, 9, 0, 9)

    collector = VerificationCollector(last_run, cache_s=30.0, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(collector)  # reads nothing yet
    assert reads == []

    def values() -> dict[str, float]:
        return {s.name: s.value for m in registry.collect() for s in m.samples}

    assert values()["sidelight_audit_last_verified_seq"] == 9.0
    now[0] = 29.0
    values()
    assert reads == [0.0]  # cached
    now[0], down[0] = 31.0, True
    assert values() == {}  # the store does not answer: nothing, and the scrape goes on
    now[0] = 40.0
    assert values() == {} and reads == [0.0, 31.0]


# -- the command ----------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A data directory holding only the signing key, as the Kubernetes Secret does."""
    folder = tmp_path / "secret"
    Signer.in_data_dir(folder)
    return folder


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder: Path) -> dict[str, tuple[int, float]]:
    return {p.name: (p.stat().st_mode, p.stat().st_mtime) for p in folder.iterdir()}


def test_the_command_signs_prints_and_leaves_the_key_folder_alone(
    store: AuditStore, store_url: str, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.append([make_record(n) for n in range(1, 6)])
    before = listing(keys)
    where = ["--audit-dir", keys, "--audit-url", store_url]
    code, out, err = cli(capsys, "audit", "verify", "--sign", *where)
    assert code == 0, out + err
    assert "OK: the log verifies" in out and "signed a checkpoint of seq 5" in out
    printed = SignedCheckpoint.from_json(out.strip().splitlines()[-1])
    assert printed in store.checkpoints()
    code, out, err = cli(capsys, "audit", "verify", "--sign", "--json", *where)
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["checkpoint"]["seq"] == 5, out + err
    assert listing(keys) == before  # read-only mount: nothing written or created there
    code, out, _ = cli(capsys, "audit", "verify", *where)  # plain verify believes both
    assert code == 0 and "2 checkpoints; last signed checkpoint at seq 5" in out


def test_the_command_exits_1_on_a_tampered_log(
    store: AuditStore, store_url: str, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store.append([make_record(n) for n in range(1, 6)])
    support.modify(store, 2)
    where = ["--audit-dir", keys, "--audit-url", store_url]
    code, out, _ = cli(capsys, "audit", "verify", "--sign", "--json", *where)
    data = json.loads(out)
    assert code == 1 and not data["ok"] and data["checkpoint"] is None
    assert store.checkpoints() == []
    run = store.last_verification()
    assert run is not None and not run.ok and run.problems == len(data["problems"])


def test_the_command_refuses_a_missing_key_and_another_public_key(
    store_url: str, tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    AuditStore.open(store_url).close()
    code, _, err = cli(
        capsys, "audit", "verify", "--sign", "--audit-dir", tmp_path / "none", "--audit-url",
        store_url,
    )  # fmt: skip
    assert code == 2 and "no signing key" in err
    assert not (tmp_path / "none").exists()
    code, _, err = cli(
        capsys, "audit", "verify", "--sign", "--audit-dir", keys, "--audit-url", store_url,
        "--public-key", tmp_path / "other.pem",
    )  # fmt: skip
    assert code == 2 and "--public-key" in err


def test_plain_verify_leaves_an_older_copy_as_it_was(
    tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A regulator's copy made before audit_verifications existed gains no table."""
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    made = AuditStore.open(url)
    made.append([make_record(1)])
    support.sql(made, "DROP TABLE audit_verifications")
    made.close()
    public = tmp_path / "key.pem"
    public.write_bytes(Signer.in_data_dir(keys).public_key_pem())
    code, out, _ = cli(
        capsys, "audit", "verify", "--audit-dir", tmp_path / "regulator", "--audit-url", url,
        "--public-key", public,
    )  # fmt: skip
    assert code == 0 and "OK" in out
    reopened = AuditStore.open(url, create=False)
    try:
        with reopened.engine.connect() as connection:
            assert not inspect(connection).has_table("audit_verifications")
    finally:
        reopened.close()
    assert not (tmp_path / "regulator").exists()
