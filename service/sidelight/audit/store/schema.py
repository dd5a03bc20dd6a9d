"""The audit log's tables, and the Python shapes of their rows.

    audit_records        seq PK, record_id UNIQUE, kind, time, subject_id, model, prev_hash,
                         hash, content (the canonical JSON the hash covers), attributions and
                         encrypted_input (the binary parts, whose SHA-256 the content holds);
                         indexed by record_id, subject_id, time, and by hash and prev_hash so
                         that the verifier can tell where a broken link points
    audit_head           one row: the last seq and hash. Appends lock it; it also outlives a
                         retention that removes every record
    audit_checkpoints    signed heads (`sidelight.audit.checkpoint`)
    audit_subject_keys   each subject's data key, wrapped (`sidelight.audit.subjects`)
    audit_verifications  each `sidelight audit verify --sign` run's outcome, newest last
                         (`sidelight.audit.attest`; what the server exports as metrics)

`create_missing` creates what a store lacks, so a store made by an older version opens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.engine import Connection

from sidelight.audit.chain import GENESIS, Anchor
from sidelight.audit.checkpoint import Checkpoint, SignedCheckpoint
from sidelight.audit.record import AuditRecord

# SQLite: an INTEGER PRIMARY KEY is the rowid itself (no second index); PostgreSQL: BIGINT.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

records_table = Table(
    "audit_records",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=False),
    Column("record_id", String, nullable=False, unique=True),
    Column("kind", String, nullable=False),
    Column("time", Double, nullable=False),
    Column("subject_id", String, nullable=False),
    Column("model", String, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("content", Text, nullable=False),
    Column("attributions", LargeBinary, nullable=False),
    Column("encrypted_input", LargeBinary, nullable=False),
    Index("ix_audit_records_subject_id", "subject_id"),
    Index("ix_audit_records_time", "time"),
    Index("ix_audit_records_hash", "hash"),
    Index("ix_audit_records_prev_hash", "prev_hash"),
)

head_table = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
)

checkpoints_table = Table(
    "audit_checkpoints",
    metadata,
    Column("id", _Seq, primary_key=True, autoincrement=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("time", Double, nullable=False),
    Column("anchor_seq", BigInteger, nullable=False),
    Column("anchor_prev_hash", LargeBinary, nullable=False),
    Column("key_id", String, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Index("ix_audit_checkpoints_seq", "seq"),
)

subject_keys_table = Table(
    "audit_subject_keys",
    metadata,
    Column("subject_id", String, primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("created", Double, nullable=False),
)

verifications_table = Table(
    "audit_verifications",
    metadata,
    Column("id", _Seq, primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("first_seq", BigInteger, nullable=True),  # None: no record was stored
    Column("last_seq", BigInteger, nullable=True),
    Column("records_checked", BigInteger, nullable=False),
    Column("problems", Integer, nullable=False),
    Column("checkpoint_seq", BigInteger, nullable=True),  # None: nothing signed
)


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    prev_hash: bytes
    hash: bytes
    record: AuditRecord


@dataclass(frozen=True)
class RawRecord:
    """A row of audit_records as stored, nothing parsed or trusted: what the verifier reads."""

    seq: int
    record_id: str
    kind: str
    time: float
    subject_id: str
    model: str
    prev_hash: bytes
    hash: bytes
    content: str
    attributions: bytes
    encrypted_input: bytes

    def parse(self) -> StoredRecord:
        record = AuditRecord.from_content(
            json.loads(self.content), self.attributions, self.encrypted_input
        )
        return StoredRecord(self.seq, self.prev_hash, self.hash, record)


@dataclass(frozen=True)
class VerificationRun:
    """One row of audit_verifications: a verification of the whole chain and what it signed."""

    time: float  # seconds since the epoch, when the verification ended
    ok: bool  # the chain verified
    first_seq: int | None  # the seqs it walked, None when no record was stored
    last_seq: int | None
    records_checked: int
    problems: int  # problems found, listed or not
    checkpoint_seq: int | None  # the seq of the checkpoint it signed; None: none signed


def create_missing(connection: Connection) -> None:
    """The tables and the head row that are not there yet (nothing else is changed)."""
    metadata.create_all(connection)
    if connection.execute(select(head_table.c.id)).first() is None:
        connection.execute(insert(head_table).values(id=1, seq=0, hash=GENESIS))


def raw_record(row: Row[Any]) -> RawRecord:
    return RawRecord(
        seq=row.seq,
        record_id=row.record_id,
        kind=row.kind,
        time=row.time,
        subject_id=row.subject_id,
        model=row.model,
        prev_hash=bytes(row.prev_hash),
        hash=bytes(row.hash),
        content=row.content,
        attributions=bytes(row.attributions),
        encrypted_input=bytes(row.encrypted_input),
    )


# audit_records' columns, in the order of the table and of RawRecord's fields (a test holds
# them equal): the order of record_row's values and of the inserts' placeholders.
RECORD_COLUMNS = tuple(column.name for column in records_table.columns)


def record_row(entry: StoredRecord, content: bytes) -> tuple[Any, ...]:
    """audit_records' values for `entry`, in RECORD_COLUMNS order."""
    record = entry.record
    return (
        entry.seq,
        record.record_id,
        record.kind.value,
        record.time,
        record.subject_id,
        record.model,
        entry.prev_hash,
        entry.hash,
        content.decode(),
        record.attributions,
        record.encrypted_input,
    )


def signed_checkpoint(row: Row[Any]) -> SignedCheckpoint:
    return SignedCheckpoint(
        checkpoint=Checkpoint(
            seq=row.seq,
            hash=bytes(row.hash),
            time=row.time,
            anchor=Anchor(row.anchor_seq, bytes(row.anchor_prev_hash)),
        ),
        key_id=row.key_id,
        signature=bytes(row.signature),
    )


def verification_run(row: Row[Any]) -> VerificationRun:
    return VerificationRun(
        time=row.time,
        ok=bool(row.ok),
        first_seq=row.first_seq,
        last_seq=row.last_seq,
        records_checked=row.records_checked,
        problems=row.problems,
        checkpoint_seq=row.checkpoint_seq,
    )
