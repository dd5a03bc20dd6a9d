"""Raw inputs encrypted per subject, and erasure by destroying the subject's key: the
ciphertext stays, becomes unreadable, and the chain still verifies."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import numpy as np
import pytest
from sidelight.audit.record import RecordKind
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore
from sidelight.audit.subjects import MASTER_KEY_FILE, SubjectKeys
from sidelight.audit.verify import verify
from sidelight.errors import ConfigError, InvalidArgument, SubjectErased

from .support import make_record

INPUT = np.arange(4, dtype="<f4").tobytes()


def keep_input(store: AuditStore, keys: SubjectKeys, n: int, subject_id: str) -> bytes:
    record_id = f"rec-{n:05d}"
    encrypted = keys.encrypt_input(subject_id, INPUT, record_id)
    store.append([make_record(n, subject_id=subject_id, encrypted_input=encrypted)])
    return encrypted


def test_inputs_round_trip_and_stay_bound_to_their_record(
    store: AuditStore, tmp_path: Path
) -> None:
    keys = SubjectKeys.open(store, tmp_path)
    encrypted = keep_input(store, keys, 1, "alice")
    assert INPUT not in encrypted
    assert keys.decrypt_input("alice", encrypted, "rec-00001") == INPUT
    stored = store.get("rec-00001").record
    assert keys.decrypt_input("alice", stored.encrypted_input, "rec-00001") == INPUT
    with pytest.raises(InvalidArgument):
        keys.decrypt_input("alice", encrypted, "rec-00002")  # moved to another record
    keep_input(store, keys, 2, "bob")
    with pytest.raises(InvalidArgument):
        keys.decrypt_input("bob", encrypted, "rec-00001")  # another subject's key


def test_master_key_file_is_private_and_kept(store: AuditStore, tmp_path: Path) -> None:
    keys = SubjectKeys.open(store, tmp_path)
    encrypted = keep_input(store, keys, 1, "alice")
    path = tmp_path / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_bytes().strip())) == 32
    reopened = SubjectKeys.open(store, tmp_path)
    assert reopened.decrypt_input("alice", encrypted, "rec-00001") == INPUT
    stranger = SubjectKeys.open(store, tmp_path / "elsewhere")
    with pytest.raises(ConfigError):
        stranger.decrypt_input("alice", encrypted, "rec-00001")


def test_erasure_shreds_the_key_and_the_chain_still_verifies(
    store: AuditStore, tmp_path: Path, signer: Signer
) -> None:
    keys = SubjectKeys.open(store, tmp_path)
    alice = [keep_input(store, keys, n, "alice") for n in (1, 2, 3)]
    bob = keep_input(store, keys, 4, "bob")
    store.append([make_record(5, subject_id="alice")])  # no input kept
    with store.transaction() as transaction:
        signer.checkpoint(transaction)

    erasure = keys.erase("alice")

    assert erasure.key_existed
    assert erasure.records_with_input == 3
    assert erasure.stored.seq == 6
    record = store.get(erasure.stored.record.record_id).record
    assert record.kind is RecordKind.ERASURE
    assert record.subject_id == "alice"
    assert record.details["subject_id"] == "alice"
    assert record.details["records_with_encrypted_input"] == 3
    assert store.subject_key("alice") is None
    for n, encrypted in enumerate(alice, 1):
        assert store.get(f"rec-{n:05d}").record.encrypted_input == encrypted  # still there
        with pytest.raises(SubjectErased) as caught:
            keys.decrypt_input("alice", encrypted, f"rec-{n:05d}")
        assert caught.value.field == "subject_id"
        assert "alice" in str(caught.value)
    assert keys.decrypt_input("bob", bob, "rec-00004") == INPUT
    report = verify(store, signer.public_key)
    assert report.ok, report.problems


def test_erasing_a_subject_without_a_key_is_still_recorded(
    store: AuditStore, tmp_path: Path
) -> None:
    erasure = SubjectKeys.open(store, tmp_path).erase("nobody")
    assert not erasure.key_existed
    assert erasure.records_with_input == 0
    assert store.count() == 1
