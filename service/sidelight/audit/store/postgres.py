"""PostgreSQL's side of the store: the engine (psycopg 3), the one-round-trip append, and the
storage of the large binary columns.

PostgreSQL commits synchronously, so a record is on disk when its append returns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Engine

from sidelight.audit.chain import Head
from sidelight.audit.store.schema import (
    RECORD_COLUMNS,
    StoredRecord,
    head_table,
    records_table,
)
from sidelight.errors import ConfigError

CONNECT_TIMEOUT_S = 5  # libpq counts whole seconds
SCHEMA_LOCK = 0x5D1E_A0D1  # pg_advisory_xact_lock key while creating the schema


def make_engine(url: URL) -> Engine:
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    if url.drivername != "postgresql+psycopg":
        raise ConfigError(
            "audit store URL", None, f"unsupported driver {url.drivername!r}: use postgresql://"
        )
    # hide_parameters: a database error's text never carries record contents into a log.
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=True,  # a server restarted since: reconnect instead of failing once
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "sidelight"},
    )


def append(connection: Any, tip: Head, last: StoredRecord, rows: list[Any]) -> bool:
    """Autocommit, one statement. Its UPDATE locks the head row; a concurrent append waits for
    it, then finds the head moved (READ COMMITTED reads the row again) and inserts nothing."""
    with connection.cursor() as cursor:
        cursor.execute(_APPEND, (last.seq, last.hash, tip.seq, tip.hash, *columns(rows)))
        return bool(cursor.rowcount == len(rows))


def columns(rows: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """PostgreSQL takes one array per column (a many-row VALUES is too long a text for
    psycopg's query cache: parsing it again each time cost more than the insert)."""
    return tuple(list(column) for column in zip(*rows, strict=True))


# Columns of large incompressible bytes: float32 maps, ciphertext.
_UNCOMPRESSED_COLUMNS = ("attributions", "encrypted_input")


def store_maps_uncompressed(connection: Connection) -> None:
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


# %b: binary parameters (bytea arrays in text format are escaped byte by byte, in Python).
INSERT = (
    f"INSERT INTO {records_table.name} ({', '.join(RECORD_COLUMNS)}) SELECT * FROM unnest("
    "%b::bigint[], %b::text[], %b::text[], %b::float8[], %b::text[], %b::text[], "
    "%b::bytea[], %b::bytea[], %b::text[], %b::bytea[], %b::bytea[])"
)
_APPEND = (
    f"WITH moved AS (UPDATE {head_table.name} SET seq = %b, hash = %b "
    "WHERE id = 1 AND seq = %b AND hash = %b RETURNING id) "
    + INSERT
    + " WHERE EXISTS (SELECT 1 FROM moved)"
)
