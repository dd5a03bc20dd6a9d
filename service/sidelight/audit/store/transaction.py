"""The write transaction that holds the chain's head lock: appends the slow way, retention,
checkpoints, erasure."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from sidelight.audit.chain import Head, link_content
from sidelight.audit.checkpoint import SignedCheckpoint
from sidelight.audit.record import AuditRecord
from sidelight.audit.store import postgres, sqlite
from sidelight.audit.store.reader import AuditReader
from sidelight.audit.store.schema import (
    RawRecord,
    StoredRecord,
    VerificationRun,
    checkpoints_table,
    head_table,
    raw_record,
    record_row,
    records_table,
    subject_keys_table,
    verifications_table,
)
from sidelight.errors import AuditRecordConflict

_IN_CHUNK = 500  # record_ids per IN (...) list


class AuditTransaction(AuditReader):
    """A write transaction holding the head lock from its start to its commit: everything done
    through it (append, prune, checkpoint, erase) is atomic and sees no concurrent append."""

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        # SQLite ignores FOR UPDATE: there BEGIN IMMEDIATE already holds the write lock.
        locked = connection.execute(
            select(head_table.c.seq, head_table.c.hash)
            .where(head_table.c.id == 1)
            .with_for_update()
        ).one()
        self._head = Head(locked.seq, locked.hash)

    def head(self) -> Head:
        return self._head

    def append(self, batch: Sequence[AuditRecord]) -> list[StoredRecord]:
        """Link `batch` to the head and insert it; a record_id already stored (or repeated in
        the batch) gives back the stored record if the content is the same."""
        contents = [record.canonical_content() for record in batch]
        known = self._by_record_id([record.record_id for record in batch])
        rows: list[tuple[Any, ...]] = []
        stored: list[StoredRecord] = []
        tip = self._head
        for record, content in zip(batch, contents, strict=True):
            prior = known.get(record.record_id)
            if prior is not None:
                if prior.content.encode() != content:
                    raise AuditRecordConflict(record.record_id)
                stored.append(prior.parse())
                continue
            digest = link_content(tip.hash, content)
            entry = StoredRecord(tip.seq + 1, tip.hash, digest, record)
            rows.append(record_row(entry, content))
            known[record.record_id] = RawRecord(*rows[-1])
            stored.append(entry)
            tip = Head(entry.seq, digest)
        if rows:
            _insert(self._connection, rows)
            self._move_head(tip)
        return stored

    def first_seq_since(self, cutoff: float) -> int | None:
        """The smallest seq of a record made at or after `cutoff`."""
        query = select(func.min(records_table.c.seq)).where(records_table.c.time >= cutoff)
        first: int | None = self._connection.execute(query).scalar()
        return first

    def delete_before(self, seq: int) -> int:
        """Remove every record before `seq`; returns how many."""
        result = self._connection.execute(delete(records_table).where(records_table.c.seq < seq))
        return int(result.rowcount)

    def add_checkpoint(self, signed: SignedCheckpoint) -> None:
        checkpoint = signed.checkpoint
        self._connection.execute(
            insert(checkpoints_table).values(
                seq=checkpoint.seq,
                hash=checkpoint.hash,
                time=checkpoint.time,
                anchor_seq=checkpoint.anchor.seq,
                anchor_prev_hash=checkpoint.anchor.prev_hash,
                key_id=signed.key_id,
                signature=signed.signature,
            )
        )

    def add_verification(self, run: VerificationRun) -> None:
        self._connection.execute(insert(verifications_table).values(**dataclasses.asdict(run)))

    def delete_subject_key(self, subject_id: str) -> bool:
        result = self._connection.execute(
            delete(subject_keys_table).where(subject_keys_table.c.subject_id == subject_id)
        )
        return bool(result.rowcount)

    def _move_head(self, tip: Head) -> None:
        self._connection.execute(
            update(head_table).where(head_table.c.id == 1).values(seq=tip.seq, hash=tip.hash)
        )
        self._head = tip

    def _by_record_id(self, record_ids: list[str]) -> dict[str, RawRecord]:
        found: dict[str, RawRecord] = {}
        unique = sorted(set(record_ids))
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start : start + _IN_CHUNK]
            rows = self._connection.execute(
                select(records_table).where(records_table.c.record_id.in_(chunk))
            )
            found.update((row.record_id, raw_record(row)) for row in rows)
        return found


def _insert(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert audit_records rows inside a locked transaction (the slow path of `append`),
    with the same statements as the one-statement path."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(postgres.INSERT, postgres.columns(rows))
    else:
        for statement, values in sqlite.inserts(rows):
            connection.exec_driver_sql(statement, values)
