"""SQLite's side of the store: the engine's connection settings (WAL, durable commits, every
write transaction opened with BEGIN IMMEDIATE) and the one-statement append.

SQLite runs in WAL mode with `synchronous=FULL`, so a record is on disk when its INSERT
returns, and readers never block the writer.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine

from sidelight.audit.store.schema import RECORD_COLUMNS, head_table, records_table
from sidelight.errors import AuditUnavailable, ConfigError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for SQLite's write lock
BEGIN_OPTION = "sidelight_sqlite_begin"  # execution option read by _begin: IMMEDIATE, DEFERRED

# SQLite's own WAL checkpoint runs at 1000 pages (4 MB); the appender leaves it to fold_wal
# at that size, and runs it itself only if nobody calls fold_wal (25 000 pages: 100 MB).
WAL_FOLD_BYTES = 4 << 20
WAL_SAFETY_PAGES = 25_000


def make_engine(url: URL) -> Engine:
    database = url.database or ""
    if url.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise ConfigError("audit store URL", None, f"unsupported driver {url.drivername!r}")
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigError(
            "audit store URL", None, "SQLite needs a file path: sqlite:///path/to/audit.db"
        )
    try:
        Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_file(Path(database))
    except OSError as exc:
        raise AuditUnavailable(
            f"audit store {url}: cannot create its folder: {exc}",
            public="the audit store cannot be created",
        ) from exc
    # hide_parameters: a database error's text never carries record contents into a log.
    engine = create_engine(url, hide_parameters=True, connect_args={"timeout": BUSY_TIMEOUT_S})
    event.listen(engine, "connect", _connect)
    event.listen(engine, "begin", _begin)
    return engine


def _private_file(path: Path) -> None:
    """The database file, made 0600 before SQLite opens it: SQLite gives its WAL and shared
    memory files the database's own mode, so the records (people and their decisions) stay
    readable only by the service's user whatever the umask. A file an older version made
    readable by others is narrowed."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        found = path.stat()
        if found.st_mode & 0o077 and found.st_uid == os.geteuid():
            try:
                path.chmod(found.st_mode & 0o700)
            except OSError as exc:  # a read-only copy (a regulator's): verified as it is
                log.warning("audit store %s is readable by others: %s", path, exc)


def _connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's pysqlite recipe: the driver's own transaction handling off, so that
    # _begin can open every write transaction with BEGIN IMMEDIATE (the write lock from
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
    deadline = time.monotonic() + BUSY_TIMEOUT_S
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


def _begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
    connection.exec_driver_sql(f"BEGIN {mode}")


def append(connection: Any, rows: list[Any]) -> bool:
    """One many-row INSERT in autocommit mode: SQLite takes the write lock when the statement
    starts and commits (durably) when it ends, and the appender's temporary triggers check
    each row's link against the head and move the head (`APPENDER_TRIGGERS`). One
    call into the driver, so the writer thread gives up and waits to retake the GIL once per
    batch, not once per statement of a transaction (that waiting, behind the event loop's
    thread, was most of a small batch's commit time). A batch beyond one statement's rows
    is wrapped in BEGIN IMMEDIATE ... COMMIT."""
    cursor = connection.cursor()
    statements = list(inserts(rows))
    try:
        if len(statements) > 1:
            cursor.execute("BEGIN IMMEDIATE")
        for statement, values in statements:
            cursor.execute(statement, values)
        if len(statements) > 1:
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
APPENDER_TRIGGERS = (
    f"""CREATE TEMP TRIGGER IF NOT EXISTS sidelight_append_links
    BEFORE INSERT ON main.{records_table.name}
    WHEN NEW.seq IS NOT (SELECT seq + 1 FROM main.{head_table.name} WHERE id = 1)
      OR NEW.prev_hash IS NOT (SELECT hash FROM main.{head_table.name} WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, '{_HEAD_MOVED}'); END""",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS sidelight_append_moves_head
    AFTER INSERT ON main.{records_table.name}
    BEGIN UPDATE {head_table.name} SET seq = NEW.seq, hash = NEW.hash WHERE id = 1; END""",
)


def inserts(rows: list[tuple[Any, ...]]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Many-row INSERTs: one call into the driver (and one release of the GIL) per 256 rows
    rather than per row; SQLite allows 32,766 parameters a statement."""
    for start in range(0, len(rows), _ROWS):
        chunk = rows[start : start + _ROWS]
        yield _insert_statement(len(chunk)), tuple(value for row in chunk for value in row)


_ROWS = 256


@functools.lru_cache(maxsize=_ROWS)
def _insert_statement(rows: int) -> str:
    values = f"({', '.join(['?'] * len(RECORD_COLUMNS))})"
    return (
        f"INSERT INTO {records_table.name} ({', '.join(RECORD_COLUMNS)}) "
        f"VALUES {', '.join([values] * rows)}"
    )
