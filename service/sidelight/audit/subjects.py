"""Raw inputs kept in the audit log, encrypted under a key per subject, and erasure by
destroying that key (crypto-shredding).

An audit record normally holds only a keyed digest of its input. Where the raw input must be
kept (to replay an explanation for a regulator), it is encrypted with AES-256-GCM under a
random data key that belongs to the record's subject; the ciphertext is bound to the subject
and the record_id (associated data), so it cannot be moved to another record unnoticed. Data
keys are stored in `audit_subject_keys` wrapped (AES-256-GCM again, bound to the subject_id)
under a master key-encryption key kept in a file in the data directory (mode 0600), never in
the database.

`erase(subject_id)` deletes the subject's key row and, in the same transaction, appends an
ERASURE record saying how many records held an input for that subject. The ciphertexts stay
where they were: the chain covers their SHA-256, so it still verifies, while nobody can read
them any more (`decrypt_input` raises `SubjectErased`).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidelight.audit import keyfiles
from sidelight.audit.record import AuditRecord, RecordKind, canonical_json
from sidelight.audit.store import AuditStore, StoredRecord
from sidelight.errors import ConfigError, InvalidArgument, SubjectErased

MASTER_KEY_FILE = "audit-master-key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # AES-GCM's standard nonce; random, so one key encrypts < 2**32 messages


@dataclass(frozen=True)
class Erasure:
    stored: StoredRecord  # the ERASURE record
    records_with_input: int  # records whose encrypted input can no longer be read
    key_existed: bool


class SubjectKeys:
    def __init__(self, store: AuditStore, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise ValueError(f"the master key must be {KEY_BYTES} bytes")
        self._store = store
        self._master = AESGCM(master_key)

    @classmethod
    def open(cls, store: AuditStore, data_dir: Path) -> SubjectKeys:
        """With the master key in `data_dir`, created there (mode 0600) if absent."""
        text = keyfiles.read_or_create(
            data_dir / MASTER_KEY_FILE, lambda: base64.b64encode(os.urandom(KEY_BYTES)) + b"\n"
        )
        return cls(store, base64.b64decode(text.strip(), validate=True))

    def encrypt_input(self, subject_id: str, plaintext: bytes, record_id: str) -> bytes:
        """nonce + ciphertext of `plaintext` under the subject's key (created if needed), for
        the record `record_id`; store it as the record's `encrypted_input`."""
        key = AESGCM(self._data_key(subject_id, create=True))
        nonce = os.urandom(NONCE_BYTES)
        return nonce + key.encrypt(nonce, plaintext, _input_context(subject_id, record_id))

    def decrypt_input(self, subject_id: str, encrypted: bytes, record_id: str) -> bytes:
        key = AESGCM(self._data_key(subject_id, create=False))
        try:
            return key.decrypt(
                encrypted[:NONCE_BYTES],
                encrypted[NONCE_BYTES:],
                _input_context(subject_id, record_id),
            )
        except InvalidTag:
            raise InvalidArgument(
                "encrypted_input", f"does not decrypt for subject and record {record_id!r}"
            ) from None

    def erase(self, subject_id: str) -> Erasure:
        """Destroy the subject's key and record that, atomically."""
        with self._store.transaction() as transaction:
            existed = transaction.delete_subject_key(subject_id)
            affected = transaction.count_encrypted_inputs(subject_id)
            erasure = AuditRecord(
                record_id=uuid.uuid4().hex,
                kind=RecordKind.ERASURE,
                time=time.time(),
                subject_id=subject_id,
                details={
                    "subject_id": subject_id,
                    "records_with_encrypted_input": affected,
                    "key_existed": existed,
                },
            )
            [stored] = transaction.append([erasure])
        return Erasure(stored, affected, existed)

    def _data_key(self, subject_id: str, *, create: bool) -> bytes:
        # Not cached: a key erased by another process must stop working here at once.
        wrapped = self._store.subject_key(subject_id)
        if wrapped is None:
            if not create:
                raise SubjectErased(subject_id)
            wrapped = self._store.add_subject_key(
                subject_id, self._wrap(subject_id, os.urandom(KEY_BYTES)), time.time()
            )
        return self._unwrap(subject_id, wrapped)

    def _wrap(self, subject_id: str, data_key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._master.encrypt(nonce, data_key, _key_context(subject_id))

    def _unwrap(self, subject_id: str, wrapped: bytes) -> bytes:
        try:
            return self._master.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _key_context(subject_id)
            )
        except InvalidTag:
            raise ConfigError(
                MASTER_KEY_FILE,
                None,
                f"does not unwrap the stored key of subject {subject_id!r}: another master key, "
                "or a key row moved or changed",
            ) from None


def _input_context(subject_id: str, record_id: str) -> bytes:
    return canonical_json(["sidelight-audit-input", subject_id, record_id])


def _key_context(subject_id: str) -> bytes:
    return canonical_json(["sidelight-audit-subject-key", subject_id])
