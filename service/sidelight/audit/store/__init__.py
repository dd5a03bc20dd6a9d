"""Where the audit log lives: one schema, one code path, two databases.

`AuditStore.open(url)` takes `sqlite:///path/to/audit.db` (the embedded default, one machine)
or `postgresql://user@host/db` (production: every API and worker replica writes into one
store). Both run the same SQLAlchemy Core statements; the few dialect differences live in one
module per backend. The package, from the bottom up (each imports only those above it):

    schema        the tables (`audit_*`) and the Python shapes of their rows
    sqlite        SQLite's engine settings and its one-statement append
    postgres      PostgreSQL's engine and its one-round-trip append
    reader        AuditReader: reads inside one transaction (a snapshot)
    transaction   AuditTransaction: a write transaction holding the head lock
    audit_store   AuditStore: the engine, the fast append path, the error boundary

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

from sidelight.audit.store.audit_store import AuditStore
from sidelight.audit.store.reader import PAGE_SIZE, AuditReader
from sidelight.audit.store.schema import (
    RawRecord,
    StoredRecord,
    VerificationRun,
    checkpoints_table,
    head_table,
    metadata,
    records_table,
    subject_keys_table,
    verifications_table,
)
from sidelight.audit.store.transaction import AuditTransaction

__all__ = [
    "PAGE_SIZE",
    "AuditReader",
    "AuditStore",
    "AuditTransaction",
    "RawRecord",
    "StoredRecord",
    "VerificationRun",
    "checkpoints_table",
    "head_table",
    "metadata",
    "records_table",
    "subject_keys_table",
    "verifications_table",
]
