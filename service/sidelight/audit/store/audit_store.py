"""`AuditStore`: the audit log's tables behind one engine, and the fast append path."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, insert, inspect, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sidelight.audit.chain import Head, link_content
from sidelight.audit.checkpoint import SignedCheckpoint
from sidelight.audit.record import AuditRecord
from sidelight.audit.store import postgres, sqlite
from sidelight.audit.store.reader import PAGE_SIZE, AuditReader
from sidelight.audit.store.schema import (
    StoredRecord,
    VerificationRun,
    create_missing,
    head_table,
    record_row,
    subject_keys_table,
    verifications_table,
)
from sidelight.audit.store.transaction import AuditTransaction
from sidelight.errors import AuditUnavailable, ConfigError

log = logging.getLogger(__name__)

_OPTIMISTIC_TRIES = 3  # appends linked to a head another process moved, before locking it


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
    def open(cls, url: str, *, create: bool = True) -> AuditStore:
        """Connect, and create the tables if they are missing (safe from several processes
        at once). With `create=False` nothing is created: a copy kept for verification (a
        regulator's) stays as it was, even when this version has tables it lacks."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ConfigError("audit store URL", None, "not a database URL") from None
        store = cls(_make_engine(parsed))
        try:
            if create:
                store._create_schema()
            else:
                store._check_schema()
        except BaseException:
            store.close()
            raise
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
        rows = [record_row(entry, content) for entry, content in zip(stored, contents, strict=True)]
        last = stored[-1]
        dbapi = self.engine.dialect.loaded_dbapi
        while True:
            fresh = self._appender is None
            connection = self._appender_connection()
            try:
                if self.dialect == "postgresql":
                    return postgres.append(connection, tip, last, rows)
                moved = sqlite.append(connection, rows)
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
            else:  # the driver is in autocommit mode already (sqlite.make_engine)
                try:
                    for trigger in sqlite.APPENDER_TRIGGERS:
                        connection.execute(trigger)
                    # Its commits leave the WAL to `fold_wal` (a safety net at 100 MB).
                    connection.execute(f"PRAGMA wal_autocheckpoint={sqlite.WAL_SAFETY_PAGES}")
                except self.engine.dialect.loaded_dbapi.Error as exc:
                    proxied.close()
                    raise self._unavailable(exc) from exc
            self._appender = (proxied, connection)
        return self._appender[1]

    def fold_wal(self) -> None:
        """SQLite: copy the write-ahead log back into the database once appends have added
        `sqlite.WAL_FOLD_BYTES` to it (a passive WAL checkpoint: no relation to signed checkpoints).
        SQLite would do it itself inside the commit that crosses 1000 pages, making that
        commit's callers wait for the copy and a sync of the database file too; a 32-record
        batch of ResNet-18 Grad-CAM maps crosses it every time (94 ms a commit that way,
        against 57 ms with the copy left to this). The writer calls this after answering a
        batch's callers. Nothing to do on PostgreSQL. A failure is left for the next call (the
        WAL only grows meanwhile)."""
        if self.dialect != "sqlite":
            return
        with self._append_lock:
            if self._unfolded < sqlite.WAL_FOLD_BYTES or self._appender is None:
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

    def add_verification(self, run: VerificationRun) -> None:
        """Record a verification run that signed nothing (one that did is recorded in the
        checkpoint's transaction). Takes no head lock: appends go on meanwhile."""
        with self._errors(), self.engine.begin() as connection:
            connection.execute(insert(verifications_table).values(**dataclasses.asdict(run)))

    def last_verification(self) -> VerificationRun | None:
        with self.reader() as reader:
            return reader.last_verification()

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
                connection.execution_options(**{sqlite.BEGIN_OPTION: "DEFERRED"})
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
                "its records disagree, verify the log",
                public="the audit store refused the write",
            ) from exc

    def _unavailable(self, exc: Exception) -> AuditUnavailable:
        return AuditUnavailable(
            f"audit store {self.url} is unavailable: {self._reason(exc)}",
            public="the audit store is unavailable",
        )

    def _reason(self, exc: Exception) -> str:
        cause = getattr(exc, "orig", None) or exc
        lines = str(cause).strip().splitlines()
        reason = lines[0] if lines else type(cause).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason

    def _check_schema(self) -> None:
        with self._errors(), self.engine.connect() as connection:
            if not inspect(connection).has_table(head_table.name):
                raise AuditUnavailable(
                    f"audit store {self.url} holds no audit log",
                    public="the audit store holds no audit log",
                )

    def _create_schema(self) -> None:
        with self._errors(), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas may start together. PostgreSQL's DDL is transactional, so under one
                # lock "create what is missing" is atomic. (SQLite: BEGIN IMMEDIATE did that.)
                connection.execute(select(func.pg_advisory_xact_lock(postgres.SCHEMA_LOCK)))
            create_missing(connection)
            if connection.dialect.name == "postgresql":
                postgres.store_maps_uncompressed(connection)


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return sqlite.make_engine(url)
    if url.get_backend_name() == "postgresql":
        return postgres.make_engine(url)
    raise ConfigError(
        "audit store URL",
        None,
        f"unsupported database {url.get_backend_name()!r}: use sqlite:///path or postgresql://…",
    )


def _linked(batch: Sequence[AuditRecord], contents: list[bytes], tip: Head) -> list[StoredRecord]:
    """`batch` (canonical `contents`) as new records after `tip`: consecutive seqs, each
    linked to the one before."""
    stored = []
    for record, content in zip(batch, contents, strict=True):
        digest = link_content(tip.hash, content)
        stored.append(StoredRecord(tip.seq + 1, tip.hash, digest, record))
        tip = Head(tip.seq + 1, digest)
    return stored
