"""The Ed25519 key that signs checkpoints, and checking a signature against a public key.

The private key lives in a PEM file in the data directory (created with mode 0600 on first
start, `Signer.load_or_create`); the public key is exported as PEM (`Signer.public_key_pem`)
to be kept where the operators of the store cannot change it: a verifier trusts the public
key it is given, never one read from the store. A key is named by its id, the SHA-256 of its
raw 32 bytes, so that a checkpoint signed by another key is reported as such rather than as a
forgery.

A new checkpoint carries the anchor of the newest stored checkpoint that this key signed
(checked, not read blindly: an anchor written into the table by hand is never re-signed).
"""

from __future__ import annotations

import enum
import hashlib
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sidelight.audit import keyfiles
from sidelight.audit.chain import GENESIS_ANCHOR, Anchor, Head
from sidelight.audit.checkpoint import Checkpoint, SignedCheckpoint
from sidelight.audit.store import AuditTransaction

SIGNING_KEY_FILE = "audit-signing-key.pem"


class SignatureCheck(enum.StrEnum):
    VALID = "valid"
    WRONG_KEY = "wrong_key"  # signed (perhaps validly) by a key other than the one trusted
    BAD_SIGNATURE = "bad_signature"  # claims the trusted key, but the bytes were changed


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """The key in `path` (PEM, PKCS#8), created there with mode 0600 if absent."""
        return cls._from_pem(path, keyfiles.read_or_create(path, _new_private_pem))

    @classmethod
    def load(cls, path: Path) -> Signer:
        """The key in `path`, only read: for a key mounted read-only (a Kubernetes Secret),
        where a missing key must be an error, not a new key nobody trusts."""
        return cls._from_pem(path, path.read_bytes())

    @classmethod
    def _from_pem(cls, path: Path, pem: bytes) -> Signer:
        private_key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(private_key)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Signer:
        return cls.load_or_create(data_dir / SIGNING_KEY_FILE)

    def public_key_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, checkpoint: Checkpoint) -> SignedCheckpoint:
        signature = self._private_key.sign(checkpoint.payload())
        return SignedCheckpoint(checkpoint, self.key_id, signature)

    def checkpoint(
        self,
        transaction: AuditTransaction,
        *,
        anchor: Anchor | None = None,
        head: Head | None = None,
    ) -> SignedCheckpoint:
        """Sign the head `transaction` holds and store the checkpoint in it. `anchor` moves
        the chain's start (retention), or names the start a verification found signed
        (`sidelight.audit.attest`); by default the current one is carried over. `head`: a head
        other than the live one, that a verification walked to."""
        head = head or transaction.head()
        signed = self.sign(
            Checkpoint(
                seq=head.seq,
                hash=head.hash,
                time=time.time(),
                anchor=anchor or self.current_anchor(transaction),
            )
        )
        transaction.add_checkpoint(signed)
        return signed

    def current_anchor(self, transaction: AuditTransaction) -> Anchor:
        """The anchor of the newest checkpoint this key validly signed; GENESIS's otherwise."""
        for stored in transaction.checkpoints(newest_first=True):
            if verify_checkpoint(stored, self.public_key) is SignatureCheck.VALID:
                return stored.checkpoint.anchor
        return GENESIS_ANCHOR


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    public_key = serialization.load_pem_public_key(pem)
    if not isinstance(public_key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return public_key


def verify_checkpoint(signed: SignedCheckpoint, public_key: Ed25519PublicKey) -> SignatureCheck:
    if signed.key_id != key_id(public_key):
        return SignatureCheck.WRONG_KEY
    try:
        public_key.verify(signed.signature, signed.checkpoint.payload())
    except InvalidSignature:
        return SignatureCheck.BAD_SIGNATURE
    return SignatureCheck.VALID


def _new_private_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
