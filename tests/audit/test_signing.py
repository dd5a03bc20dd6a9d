"""The checkpoint signing key, its file, and checkpoints exported outside the store."""

from __future__ import annotations

import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sidelight.audit.chain import GENESIS, GENESIS_ANCHOR, Anchor
from sidelight.audit.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    export_checkpoints,
    load_checkpoints,
)
from sidelight.audit.signing import (
    SignatureCheck,
    Signer,
    load_public_key,
    verify_checkpoint,
)
from sidelight.audit.store import AuditStore

from .support import make_record, sql

CHECKPOINT = Checkpoint(seq=7, hash=b"\x01" * 32, time=1_700_000_000.5, anchor=GENESIS_ANCHOR)


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing-key.pem"
    created = Signer.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Signer.load_or_create(path).key_id == created.key_id
    assert list(path.parent.iterdir()) == [path]  # no partial files left behind


def test_processes_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(Signer.load_or_create(path).key_id))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1


def test_signature_checks(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "a.pem")
    other = Signer.load_or_create(tmp_path / "b.pem")
    public_key = load_public_key(signer.public_key_pem())
    signed = signer.sign(CHECKPOINT)
    assert verify_checkpoint(signed, public_key) is SignatureCheck.VALID
    moved = replace(signed, checkpoint=replace(CHECKPOINT, seq=6))
    assert verify_checkpoint(moved, public_key) is SignatureCheck.BAD_SIGNATURE
    reanchored = replace(signed, checkpoint=replace(CHECKPOINT, anchor=Anchor(5, GENESIS)))
    assert verify_checkpoint(reanchored, public_key) is SignatureCheck.BAD_SIGNATURE
    assert verify_checkpoint(other.sign(CHECKPOINT), public_key) is SignatureCheck.WRONG_KEY
    claimed = replace(other.sign(CHECKPOINT), key_id=signer.key_id)
    assert verify_checkpoint(claimed, public_key) is SignatureCheck.BAD_SIGNATURE


def test_public_key_pem_is_not_the_private_key(tmp_path: Path) -> None:
    pem = Signer.load_or_create(tmp_path / "a.pem").public_key_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(ValueError, match="Ed25519"):
        load_public_key(_rsa_public_pem())


def test_export_and_load_round_trip(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "a.pem")
    signed = [signer.sign(replace(CHECKPOINT, seq=seq)) for seq in (3, 9, 12)]
    path = tmp_path / "escrow" / "checkpoints.jsonl"
    path.parent.mkdir()
    assert export_checkpoints(path, signed) == 3
    assert load_checkpoints(path) == signed
    assert list(path.parent.iterdir()) == [path]


def test_a_damaged_export_is_refused_with_its_line(tmp_path: Path) -> None:
    signer = Signer.load_or_create(tmp_path / "a.pem")
    path = tmp_path / "checkpoints.jsonl"
    export_checkpoints(path, [signer.sign(CHECKPOINT)])
    path.write_text(path.read_text() + '{"type": "something else"}\n')
    with pytest.raises(ValueError, match=r"checkpoints.jsonl:2"):
        load_checkpoints(path)


def test_json_line_holds_the_signed_payload(tmp_path: Path) -> None:
    signed = Signer.load_or_create(tmp_path / "a.pem").sign(CHECKPOINT)
    assert SignedCheckpoint.from_json(signed.to_json()) == signed


def test_checkpoints_carry_the_anchor_the_key_signed(store: AuditStore, signer: Signer) -> None:
    store.append([make_record(1)])
    with store.transaction() as transaction:
        first = signer.checkpoint(transaction)
    assert first.checkpoint.anchor == GENESIS_ANCHOR
    assert (first.checkpoint.seq, first.checkpoint.hash) == (1, store.head().hash)
    with store.transaction() as transaction:
        signer.checkpoint(transaction, anchor=Anchor(2, b"\x02" * 32))
    with store.transaction() as transaction:
        carried = signer.checkpoint(transaction)
    assert carried.checkpoint.anchor == Anchor(2, b"\x02" * 32)
    # An anchor written into the table by hand, unsigned, is not carried over.
    sql(store, "UPDATE audit_checkpoints SET anchor_seq = 99")
    with store.transaction() as transaction:
        assert signer.checkpoint(transaction).checkpoint.anchor == GENESIS_ANCHOR
    assert len(store.checkpoints()) == 4


def _rsa_public_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
