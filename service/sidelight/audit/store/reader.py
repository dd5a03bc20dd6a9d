"""Reading the store inside one transaction (`AuditStore.reader()`: one snapshot)."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from sidelight.audit.chain import Head
from sidelight.audit.checkpoint import SignedCheckpoint
from sidelight.audit.store.schema import (
    RawRecord,
    StoredRecord,
    VerificationRun,
    checkpoints_table,
    head_table,
    raw_record,
    records_table,
    signed_checkpoint,
    subject_keys_table,
    verification_run,
    verifications_table,
)
from sidelight.errors import AuditRecordNotFound

PAGE_SIZE = 1000


class AuditReader:
    """Reads on one connection inside one transaction; `AuditStore.reader()` makes it a
    snapshot, so that a verifier sees the records, head and checkpoints of one moment."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def head(self) -> Head:
        row = self._connection.execute(select(head_table.c.seq, head_table.c.hash)).one()
        return Head(row.seq, row.hash)

    def count(self) -> int:
        return int(
            self._connection.execute(select(func.count()).select_from(records_table)).scalar_one()
        )

    def first_seq(self) -> int | None:
        first: int | None = self._connection.execute(select(func.min(records_table.c.seq))).scalar()
        return first

    def page(self, after_seq: int | None = None, limit: int = PAGE_SIZE) -> list[RawRecord]:
        """Up to `limit` records with seq > after_seq (from the first if None), in seq order."""
        query = select(records_table).order_by(records_table.c.seq).limit(limit)
        if after_seq is not None:
            query = query.where(records_table.c.seq > after_seq)
        return [raw_record(row) for row in self._connection.execute(query)]

    def raw_records(
        self, after_seq: int | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[RawRecord]:
        """Every record after `after_seq` in seq order, `page_size` rows in memory at a time
        (from the first stored, whatever its seq, when None)."""
        while page := self.page(after_seq, page_size):
            yield from page
            after_seq = page[-1].seq

    def at(self, seq: int) -> RawRecord | None:
        row = self._connection.execute(
            select(records_table).where(records_table.c.seq == seq)
        ).first()
        return None if row is None else raw_record(row)

    def get(self, record_id: str) -> StoredRecord:
        row = self._connection.execute(
            select(records_table).where(records_table.c.record_id == record_id)
        ).first()
        if row is None:
            raise AuditRecordNotFound(record_id)
        return raw_record(row).parse()

    def for_subject(
        self, subject_id: str, after_seq: int = 0, limit: int = PAGE_SIZE
    ) -> list[StoredRecord]:
        rows = self._connection.execute(
            select(records_table)
            .where(records_table.c.subject_id == subject_id, records_table.c.seq > after_seq)
            .order_by(records_table.c.seq)
            .limit(limit)
        )
        return [raw_record(row).parse() for row in rows]

    def seqs_with_hash(self, digest: bytes) -> list[int]:
        query = (
            select(records_table.c.seq)
            .where(records_table.c.hash == digest)
            .order_by(records_table.c.seq)
        )
        return list(self._connection.execute(query).scalars())

    def seqs_linking_to(self, digest: bytes) -> list[int]:
        """The records whose prev_hash is `digest`: the successors of the record hashed so."""
        query = (
            select(records_table.c.seq)
            .where(records_table.c.prev_hash == digest)
            .order_by(records_table.c.seq)
        )
        return list(self._connection.execute(query).scalars())

    def checkpoints(self, newest_first: bool = False) -> Iterator[SignedCheckpoint]:
        """Every stored checkpoint, in the order they were added (or the reverse), a page at
        a time."""
        order = checkpoints_table.c.id.desc() if newest_first else checkpoints_table.c.id
        last: int | None = None
        while True:
            query = select(checkpoints_table).order_by(order).limit(PAGE_SIZE)
            if last is not None:
                query = query.where(
                    checkpoints_table.c.id < last if newest_first else checkpoints_table.c.id > last
                )
            rows = self._connection.execute(query).all()
            if not rows:
                return
            yield from (signed_checkpoint(row) for row in rows)
            last = rows[-1].id

    def subject_key(self, subject_id: str) -> bytes | None:
        query = select(subject_keys_table.c.wrapped_key).where(
            subject_keys_table.c.subject_id == subject_id
        )
        wrapped: bytes | None = self._connection.execute(query).scalar_one_or_none()
        return wrapped

    def count_encrypted_inputs(self, subject_id: str) -> int:
        query = (
            select(func.count())
            .select_from(records_table)
            .where(
                records_table.c.subject_id == subject_id,
                func.length(records_table.c.encrypted_input) > 0,
            )
        )
        return int(self._connection.execute(query).scalar_one())

    def last_verification(self) -> VerificationRun | None:
        """The newest recorded `verify --sign` run (one row, read by its primary key)."""
        row = self._connection.execute(
            select(verifications_table).order_by(verifications_table.c.id.desc()).limit(1)
        ).first()
        return None if row is None else verification_run(row)
