"""Where the audit log lives: one schema, one code path, two databases.

`AuditStore.open(url)` takes `sqlite:///path/to/audit.db` (the embedded default, one machine)
or `postgresql://user@host/db` (production: every API and worker replica writes into one
store). Both run the same SQLAlchemy Core statements; the few dialect differences are marked
where they occur.

Tables (all prefixed `audit_`):

    audit_records       seq PK, record_id UNIQUE, kind, time, subject_id, model, prev_hash,
                        hash, content (the canonical JSON the hash covers), attributions and
                        encrypted_input (the binary parts, whose SHA-256 the content holds);
                        indexed by record_id, subject_id, time, and by hash and prev_hash so
                        that the verifier can tell where a broken link points
    audit_head          one row: the last seq and hash. Appends lock it; it also outlives a
                        retention that removes every record
    audit_checkpoints   signed heads (`sidelight.audit.checkpoint`)
    audit_subject_keys  each subject's data key, wrapped (`sidelight.audit.subjects`)

Appends form one chain across threads and processes. A process links a batch to the head it
last wrote, then one statement inserts the batch only if the head is still exactly that seq
and hash, and moves it to the batch's end (PostgreSQL: one round trip in autocommit, the head
row locked by the UPDATE; SQLite: one INSERT in autocommit, checked and followed by TEMP
triggers on the appender's own connection). If another process appended in between, nothing
is written and the batch is linked again. A locking transaction (`transaction()`:
`SELECT … FOR UPDATE` on the head row, or `BEGIN IMMEDIATE`) is the fallback, and the way
prune, erase and checkpoints change the log.
SQLite runs in WAL mode with `synchronous=FULL`, and PostgreSQL commits synchronously, so a
record is on disk when `append` returns.

Appending a record_id that is already stored returns the stored record when the content is
the same (a retry after a commit whose outcome was lost) and raises `AuditRecordConflict` when
it differs. A store that cannot be reached or written raises `AuditUnavailable`, naming the
store by its URL with the password hidden; so does one whose head row disagrees with its
records (the insert then collides), which only tampering or a restore can cause.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
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
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sidelight.audit.chain import GENESIS, Anchor, Head, link_content
from sidelight.audit.checkpoint import Checkpoint, SignedCheckpoint
from sidelight.audit.record import AuditRecord
from sidelight.errors import AuditRecordConflict, AuditRecordNotFound, AuditUnavailable, ConfigError

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for SQLite's write lock
CONNECT_TIMEOUT_S = 5  # PostgreSQL: libpq counts whole seconds
_SQLITE_BEGIN = "sidelight_sqlite_begin"  # execution option read by _sqlite_begin
_SCHEMA_LOCK = 0x5D1E_A0D1  # pg_advisory_xact_lock key while creating the schema
_IN_CHUNK = 500  # record_ids per IN (...) list

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
        return [_raw(row) for row in self._connection.execute(query)]

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
        return None if row is None else _raw(row)

    def get(self, record_id: str) -> StoredRecord:
        row = self._connection.execute(
            select(records_table).where(records_table.c.record_id == record_id)
        ).first()
        if row is None:
            raise AuditRecordNotFound(record_id)
        return _raw(row).parse()

    def for_subject(
        self, subject_id: str, after_seq: int = 0, limit: int = PAGE_SIZE
    ) -> list[StoredRecord]:
        rows = self._connection.execute(
            select(records_table)
            .where(records_table.c.subject_id == subject_id, records_table.c.seq > after_seq)
            .order_by(records_table.c.seq)
            .limit(limit)
        )
        return [_raw(row).parse() for row in rows]

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
            yield from (_checkpoint(row) for row in rows)
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
            rows.append(_row(entry, content))
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
            found.update((row.record_id, _raw(row)) for row in rows)
        return found


class AuditStore:
    """The audit log's tables behind one engine. Thread-safe; each process opens its own."""

    def __init__(self, engine: Engine) -> None:
        """Use `AuditStore.open(url)`; this takes an engine already configured by it."""
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=True)
        self._password = engine.url.password
        # The head as this process last wrote or read it (None: read it), for `append`.
        self._tip: Head | None = None
        self._appender: tuple[Any, Any] | None = None  # see _appender_connection
        self._unfolded = 0  # SQLite: bytes appended since the WAL was last folded back
        self._append_lock = threading.Lock()  # guards the three

    @classmethod
    def open(cls, url: str) -> AuditStore:
        """Connect, and create the tables if they are missing (safe from several processes
        at once)."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError("audit store URL", None, "not a database URL") from None
        store = cls(_make_engine(parsed))
        store._create_schema()
        return store

    def close(self) -> None:
        with self._append_lock:
            self._drop_appender()
        self.engine.dispose()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[AuditTransaction]:
        """One write transaction holding the head lock; commits when the block ends."""
        with self._errors(), self.engine.begin() as connection:
            yield AuditTransaction(connection)

    def append(self, batch: Sequence[AuditRecord]) -> list[StoredRecord]:
        """Append `batch` atomically, durable on return; the stored records, in order.

        The common case costs one statement (PostgreSQL: one round trip, no transaction held
        open across Python work) or one short transaction (SQLite): the batch is linked to the
        head this process last wrote or read, and the statement moves the head from exactly
        that one to the batch's last record and inserts the batch only if it did. Another
        process may have appended meanwhile: the head then is not where we thought, nothing is
        written, we read the head and try again. A record_id stored already (a job recorded
        again after a retry) fails the insert. After a few misses, or on such a failure, one
        locking transaction does it the slow way: head locked, record_ids looked up."""
        if not batch:
            return []
        contents = [record.canonical_content() for record in batch]  # before any lock
        with self._append_lock:
            for _ in range(_OPTIMISTIC_TRIES):
                tip = self._tip if self._tip is not None else self.head()
                stored = _linked(batch, contents, tip)
                try:
                    moved = self._insert_after(tip, stored, contents)
                except self.engine.dialect.loaded_dbapi.IntegrityError:
                    break
                finally:
                    self._tip = None
                if moved:
                    self._tip = Head(stored[-1].seq, stored[-1].hash)
                    return stored
            with self.transaction() as transaction:
                return transaction.append(batch)

    def _insert_after(self, tip: Head, stored: list[StoredRecord], contents: list[bytes]) -> bool:
        """Move the head from `tip` to the last of `stored` and insert them all, or (the head
        is elsewhere) do nothing and return False. A record_id stored already raises the
        driver's IntegrityError, having written nothing."""
        rows = [_row(entry, content) for entry, content in zip(stored, contents, strict=True)]
        last = stored[-1]
        dbapi = self.engine.dialect.loaded_dbapi
        while True:
            fresh = self._appender is None
            connection = self._appender_connection()
            try:
                if self.dialect == "postgresql":
                    return _append_postgres(connection, tip, last, rows)
                moved = _append_sqlite(connection, rows)
                if moved:
                    self._unfolded += sum(
                        len(content) + len(entry.record.attributions)
                        for entry, content in zip(stored, contents, strict=True)
                    )
                return moved
            except dbapi.IntegrityError:
                raise
            except dbapi.Error as exc:
                self._drop_appender()
                if fresh:
                    raise self._unavailable(exc) from exc
                # The connection kept since the last append broke (a restarted server): once
                # more on a new one. Safe: the statement is atomic, and if it did land, the
                # head moved and the retry writes nothing.

    def _appender_connection(self) -> Any:
        """The driver's connection kept for appends: taken from the pool once and detached
        from it, so that an append costs the driver's calls alone (SQLAlchemy's checkout,
        events and result objects were a large share of a small batch's time)."""
        if self._appender is None:
            try:
                with self._errors():
                    proxied = self.engine.raw_connection()
            except self.engine.dialect.loaded_dbapi.Error as exc:  # the pool does not wrap
                raise self._unavailable(exc) from exc
            connection: Any = proxied.driver_connection
            proxied.detach()  # ours now: closed by _drop_appender, never handed out again
            if self.dialect == "postgresql":
                connection.autocommit = True
            else:  # the driver is in autocommit mode already (_sqlite_connect)
                try:
                    for trigger in _SQLITE_APPENDER_TRIGGERS:
                        connection.execute(trigger)
                    # Its commits leave the WAL to `fold_wal` (a safety net at 100 MB).
                    connection.execute(f"PRAGMA wal_autocheckpoint={_WAL_SAFETY_PAGES}")
                except self.engine.dialect.loaded_dbapi.Error as exc:
                    proxied.close()
                    raise self._unavailable(exc) from exc
            self._appender = (proxied, connection)
        return self._appender[1]

    def fold_wal(self) -> None:
        """SQLite: copy the write-ahead log back into the database once appends have added
        `_WAL_FOLD_BYTES` to it (a passive WAL checkpoint: no relation to signed checkpoints).
        SQLite would do it itself inside the commit that crosses 1000 pages, making that
        commit's callers wait for the copy and a sync of the database file too; a 32-record
        batch of ResNet-18 Grad-CAM maps crosses it every time (94 ms a commit that way,
        against 57 ms with the copy left to this). The writer calls this after answering a
        batch's callers. Nothing to do on PostgreSQL. A failure is left for the next call (the
        WAL only grows meanwhile)."""
        if self.dialect != "sqlite":
            return
        with self._append_lock:
            if self._unfolded < _WAL_FOLD_BYTES or self._appender is None:
                return
            try:
                self._appender[1].execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except self.engine.dialect.loaded_dbapi.Error as exc:
                log.warning("audit store: write-ahead log not folded back: %s", exc)
                return
            self._unfolded = 0

    def _drop_appender(self) -> None:
        if self._appender is not None:
            with contextlib.suppress(Exception):
                self._appender[0].close()
            self._appender = None

    def add_subject_key(self, subject_id: str, wrapped_key: bytes, created: float) -> bytes:
        """Store a subject's wrapped key unless one exists; returns the one stored (another
        process's, if it got there first)."""
        with self._errors():
            try:
                with self.engine.begin() as connection:
                    existing = AuditReader(connection).subject_key(subject_id)
                    if existing is not None:
                        return existing
                    connection.execute(
                        insert(subject_keys_table).values(
                            subject_id=subject_id, wrapped_key=wrapped_key, created=created
                        )
                    )
                    return wrapped_key
            except IntegrityError:  # PostgreSQL: a concurrent insert of the same subject won
                with self.reader() as reader:
                    stored = reader.subject_key(subject_id)
                if stored is None:
                    raise
                return stored

    # -- reading -----------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[AuditReader]:
        """A read-only snapshot: what it returns stays consistent while others append."""
        with self._errors(), self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection.execution_options(isolation_level="REPEATABLE READ")
            else:  # SQLite in WAL mode: a deferred transaction reads one snapshot, locks nothing
                connection.execution_options(**{_SQLITE_BEGIN: "DEFERRED"})
            with connection.begin():
                yield AuditReader(connection)

    def head(self) -> Head:
        with self.reader() as reader:
            return reader.head()

    def count(self) -> int:
        with self.reader() as reader:
            return reader.count()

    def get(self, record_id: str) -> StoredRecord:
        with self.reader() as reader:
            return reader.get(record_id)

    def for_subject(
        self, subject_id: str, after_seq: int = 0, limit: int = PAGE_SIZE
    ) -> list[StoredRecord]:
        with self.reader() as reader:
            return reader.for_subject(subject_id, after_seq, limit)

    def subject_key(self, subject_id: str) -> bytes | None:
        with self.reader() as reader:
            return reader.subject_key(subject_id)

    def records(self, after_seq: int = 0, page_size: int = PAGE_SIZE) -> Iterator[StoredRecord]:
        """Every record after `after_seq` in seq order, for export; each page is read in its
        own short transaction, so a long export holds no snapshot open."""
        while True:
            with self.reader() as reader:
                page = reader.page(after_seq, page_size)
            if not page:
                return
            yield from (raw.parse() for raw in page)
            after_seq = page[-1].seq

    def checkpoints(self) -> list[SignedCheckpoint]:
        with self.reader() as reader:
            return list(reader.checkpoints())

    # -- the boundary ----------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors that mean "cannot reach or write the store" become AuditUnavailable,
        here and nowhere else (the appender's own driver calls: `_insert_after`)."""
        try:
            yield
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            raise self._unavailable(exc) from exc
        except IntegrityError as exc:  # locked appends look record_ids up: the head is wrong
            raise AuditUnavailable(
                f"audit store {self.url} refused the write: {self._reason(exc)}; its head and "
                "its records disagree, verify the log"
            ) from exc

    def _unavailable(self, exc: Exception) -> AuditUnavailable:
        return AuditUnavailable(f"audit store {self.url} is unavailable: {self._reason(exc)}")

    def _reason(self, exc: Exception) -> str:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        reason = lines[0] if lines else type(cause).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason

    def _create_schema(self) -> None:
        with self._errors(), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas may start together. PostgreSQL's DDL is transactional, so under one
                # lock "create what is missing" is atomic. (SQLite: BEGIN IMMEDIATE did that.)
                connection.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            metadata.create_all(connection)
            if connection.dialect.name == "postgresql":
                _store_maps_uncompressed(connection)
            if connection.execute(select(head_table.c.id)).first() is None:
                connection.execute(insert(head_table).values(id=1, seq=0, hash=GENESIS))


# Columns of large incompressible bytes: float32 maps, ciphertext.
_UNCOMPRESSED_COLUMNS = ("attributions", "encrypted_input")


def _store_maps_uncompressed(connection: Connection) -> None:
    """PostgreSQL compresses large values (pglz) in its backend before storing them out of line.
    On float maps that saves 14% of the space and costs the CPU the model needs: 16 ResNet-18
    Grad-CAM maps (200 KB each) took 60 ms to insert compressed against 10 ms stored as they
    are (STORAGE EXTERNAL: out of line, uncompressed). Altered only where not yet so, since
    ALTER TABLE locks the table against replicas already writing."""
    table = records_table.name
    for column in _UNCOMPRESSED_COLUMNS:
        storage = connection.execute(
            text(
                "SELECT attstorage FROM pg_attribute "
                "WHERE attrelid = CAST(:table AS regclass) AND attname = :column"
            ),
            {"table": table, "column": column},
        ).scalar_one()
        if storage != "e":
            connection.execute(
                text(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" SET STORAGE EXTERNAL')
            )


def _make_engine(url: URL) -> Engine:
    # hide_parameters: a database error's text never carries record contents into a log.
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if url.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise ConfigError("audit store URL", None, f"unsupported driver {url.drivername!r}")
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ConfigError(
                "audit store URL", None, "SQLite needs a file path: sqlite:///path/to/audit.db"
            )
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditUnavailable(f"audit store {url}: cannot create its folder: {exc}") from exc
        engine = create_engine(
            url, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
        if url.drivername != "postgresql+psycopg":
            raise ConfigError(
                "audit store URL", None, f"unsupported driver {url.drivername!r}: use postgresql://"
            )
        return create_engine(
            url,
            hide_parameters=True,
            pool_pre_ping=True,  # a server restarted since: reconnect instead of failing once
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "sidelight"},
        )
    raise ConfigError(
        "audit store URL",
        None,
        f"unsupported database {url.get_backend_name()!r}: use sqlite:///path or postgresql://…",
    )


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's pysqlite recipe: the driver's own transaction handling off, so that
    # _sqlite_begin can open every write transaction with BEGIN IMMEDIATE (the write lock from
    # the first statement, instead of a deadlock-prone upgrade at the first write).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    _enter_wal_mode(cursor)  # readers never block the writer
    cursor.execute("PRAGMA synchronous=FULL")  # in WAL mode, FULL syncs every commit
    cursor.execute("PRAGMA secure_delete=ON")  # an erased subject's key is overwritten on disk
    cursor.close()


def _enter_wal_mode(cursor: Any) -> None:
    """Switch a new database file to WAL mode; once set, the mode stays in the file.

    The switch takes an exclusive lock from a reader's shared one. When stores open a new file
    together, one may hold the write lock (creating the schema) while another asks to switch:
    SQLite sees a lock upgrade that could deadlock and answers "database is locked" at once,
    without its busy handler. So the switch is retried here, within the same busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # the holder commits within milliseconds; back off up to 50 ms
        pause = min(pause * 2, 0.05)


def _sqlite_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _raw(row: Row[Any]) -> RawRecord:
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
# them equal): the order of _row's values and of the inserts' placeholders.
_COLUMNS = tuple(column.name for column in records_table.columns)


def _row(entry: StoredRecord, content: bytes) -> tuple[Any, ...]:
    """audit_records' values for `entry`, in _COLUMNS order."""
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


def _append_postgres(connection: Any, tip: Head, last: StoredRecord, rows: list[Any]) -> bool:
    """Autocommit, one statement. Its UPDATE locks the head row; a concurrent append waits for
    it, then finds the head moved (READ COMMITTED reads the row again) and inserts nothing."""
    with connection.cursor() as cursor:
        cursor.execute(_POSTGRES_APPEND, (last.seq, last.hash, tip.seq, tip.hash, *_columns(rows)))
        return bool(cursor.rowcount == len(rows))


def _append_sqlite(connection: Any, rows: list[Any]) -> bool:
    """One many-row INSERT in autocommit mode: SQLite takes the write lock when the statement
    starts and commits (durably) when it ends, and the appender's temporary triggers check
    each row's link against the head and move the head (`_SQLITE_APPENDER_TRIGGERS`). One
    call into the driver, so the writer thread gives up and waits to retake the GIL once per
    batch, not once per statement of a transaction (that waiting, behind the event loop's
    thread, was most of a small batch's commit time). A batch beyond one statement's rows
    is wrapped in BEGIN IMMEDIATE ... COMMIT."""
    cursor = connection.cursor()
    inserts = list(_sqlite_inserts(rows))
    try:
        if len(inserts) > 1:
            cursor.execute("BEGIN IMMEDIATE")
        for statement, values in inserts:
            cursor.execute(statement, values)
        if len(inserts) > 1:
            cursor.execute("COMMIT")
        return True
    except connection.IntegrityError as exc:
        if connection.in_transaction:
            connection.rollback()
        if _HEAD_MOVED in str(exc):
            return False
        raise
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise
    finally:
        cursor.close()


# On the appender's own connection only (TEMP: not in the schema, so an insert through any
# other connection, a tamperer's included, neither is checked nor moves the head). SQLite
# refuses a qualified table name in a trigger's UPDATE: there, audit_head is main's (no TEMP
# table of that name exists on this connection).
_HEAD_MOVED = "sidelight: the audit head moved"
_SQLITE_APPENDER_TRIGGERS = (
    f"""CREATE TEMP TRIGGER IF NOT EXISTS sidelight_append_links
    BEFORE INSERT ON main.{records_table.name}
    WHEN NEW.seq IS NOT (SELECT seq + 1 FROM main.{head_table.name} WHERE id = 1)
      OR NEW.prev_hash IS NOT (SELECT hash FROM main.{head_table.name} WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, '{_HEAD_MOVED}'); END""",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS sidelight_append_moves_head
    AFTER INSERT ON main.{records_table.name}
    BEGIN UPDATE {head_table.name} SET seq = NEW.seq, hash = NEW.hash WHERE id = 1; END""",
)


def _insert(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert audit_records rows inside a locked transaction (the slow path of `append`),
    with the same statements as the one-statement path."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(_POSTGRES_INSERT, _columns(rows))
    else:
        for statement, values in _sqlite_inserts(rows):
            connection.exec_driver_sql(statement, values)


def _columns(rows: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """PostgreSQL takes one array per column (a many-row VALUES is too long a text for
    psycopg's query cache: parsing it again each time cost more than the insert)."""
    return tuple(list(column) for column in zip(*rows, strict=True))


def _sqlite_inserts(rows: list[tuple[Any, ...]]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Many-row INSERTs: one call into the driver (and one release of the GIL) per 256 rows
    rather than per row; SQLite allows 32,766 parameters a statement."""
    for start in range(0, len(rows), _SQLITE_ROWS):
        chunk = rows[start : start + _SQLITE_ROWS]
        yield _sqlite_insert(len(chunk)), tuple(value for row in chunk for value in row)


def _linked(batch: Sequence[AuditRecord], contents: list[bytes], tip: Head) -> list[StoredRecord]:
    """`batch` (canonical `contents`) as new records after `tip`: consecutive seqs, each
    linked to the one before."""
    stored = []
    for record, content in zip(batch, contents, strict=True):
        digest = link_content(tip.hash, content)
        stored.append(StoredRecord(tip.seq + 1, tip.hash, digest, record))
        tip = Head(tip.seq + 1, digest)
    return stored


# SQLite's own WAL checkpoint runs at 1000 pages (4 MB); the appender leaves it to fold_wal
# at that size, and runs it itself only if nobody calls fold_wal (25 000 pages: 100 MB).
_WAL_FOLD_BYTES = 4 << 20
_WAL_SAFETY_PAGES = 25_000
_OPTIMISTIC_TRIES = 3  # appends linked to a head another process moved, before locking it

# %b: binary parameters (bytea arrays in text format are escaped byte by byte, in Python).
_POSTGRES_INSERT = (
    f"INSERT INTO {records_table.name} ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    "%b::bigint[], %b::text[], %b::text[], %b::float8[], %b::text[], %b::text[], "
    "%b::bytea[], %b::bytea[], %b::text[], %b::bytea[], %b::bytea[])"
)
_POSTGRES_APPEND = (
    f"WITH moved AS (UPDATE {head_table.name} SET seq = %b, hash = %b "
    "WHERE id = 1 AND seq = %b AND hash = %b RETURNING id) "
    + _POSTGRES_INSERT
    + " WHERE EXISTS (SELECT 1 FROM moved)"
)


_SQLITE_ROWS = 256


@functools.lru_cache(maxsize=_SQLITE_ROWS)
def _sqlite_insert(rows: int) -> str:
    values = f"({', '.join(['?'] * len(_COLUMNS))})"
    return (
        f"INSERT INTO {records_table.name} ({', '.join(_COLUMNS)}) "
        f"VALUES {', '.join([values] * rows)}"
    )


def _checkpoint(row: Row[Any]) -> SignedCheckpoint:
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
