"""The store, on SQLite and on a real PostgreSQL: appends link a consecutive chain in one
transaction, reads find what was written, retries are idempotent, and a store that is down
raises AuditUnavailable without leaking the URL's password."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sidelight.audit.chain import GENESIS, Head, link_hash
from sidelight.audit.record import RecordKind
from sidelight.audit.store import (
    AuditStore,
    AuditTransaction,
    RawRecord,
    records_table,
)
from sidelight.audit.store.audit_store import _linked
from sidelight.audit.writer import AuditWriter
from sidelight.errors import (
    AuditRecordConflict,
    AuditRecordNotFound,
    AuditUnavailable,
    ConfigError,
)
from sqlalchemy import inspect
from sqlalchemy import text as sql_text

from .support import PostgresServer, create_database, drop_database, free_port, make_record, sql


def test_append_links_a_consecutive_chain(store: AuditStore) -> None:
    first = store.append([make_record(1), make_record(2)])
    second = store.append([make_record(3)])
    stored = first + second
    assert [entry.seq for entry in stored] == [1, 2, 3]
    assert stored[0].prev_hash == GENESIS
    for before, entry in itertools.pairwise(stored):
        assert entry.prev_hash == before.hash
    for entry in stored:
        assert entry.hash == link_hash(entry.prev_hash, entry.record)
    assert store.head() == Head(3, stored[-1].hash)
    assert store.count() == 3


def test_a_batch_larger_than_one_insert_statement(store: AuditStore) -> None:
    """SQLite takes at most 32,766 parameters a statement: a big batch goes in several, one
    transaction, and reads back whole and linked."""
    batch = [make_record(n) for n in range(1, 3_101)]
    stored = store.append(batch)
    assert [entry.seq for entry in stored] == list(range(1, 3_101))
    with store.reader() as reader:
        raws = list(reader.raw_records())
    assert [raw.record_id for raw in raws] == [record.record_id for record in batch]
    assert [raw.hash for raw in raws] == [entry.hash for entry in stored]
    assert store.get("rec-03100").record == batch[-1]
    assert store.head() == Head(3_100, stored[-1].hash)


def test_appends_after_another_writer_moved_the_head(store_url: str) -> None:
    """Each store remembers the head it last wrote; when another writer (another replica)
    has appended since, the statement inserts nothing, and the store reads the head again:
    one chain, never a fork."""
    first, second = AuditStore.open(store_url), AuditStore.open(store_url)
    try:
        stored = []
        for n in range(1, 13):
            writer = first if n % 3 else second  # each finds the head moved, now and then
            stored += writer.append([make_record(2 * n), make_record(2 * n + 1)])
        assert [entry.seq for entry in stored] == list(range(1, 25))
        for before, entry in itertools.pairwise(stored):
            assert entry.prev_hash == before.hash
        with first.reader() as reader:
            assert [raw.hash for raw in reader.raw_records()] == [e.hash for e in stored]
        assert second.head() == Head(24, stored[-1].hash)
    finally:
        first.close()
        second.close()


def test_a_head_moved_elsewhere_writes_nothing(store: AuditStore) -> None:
    """The append statement moves the head only from the one it was linked to. Here record 2
    is gone (as after a retention) but the head still says 2: a batch linked to record 1
    would find its seq free, and must still write nothing."""
    stored = store.append([make_record(1), make_record(2)])
    sql(store, "DELETE FROM audit_records WHERE seq = 2")
    behind = Head(1, stored[0].hash)
    late = make_record(3)
    entries = _linked([late], [late.canonical_content()], behind)
    assert store._insert_after(behind, entries, [late.canonical_content()]) is False
    assert store.count() == 1
    assert store.head() == Head(2, stored[1].hash)


class LockCountingStore(AuditStore):
    """The real store, counting the locking transactions it opens."""

    locked = 0

    @contextmanager
    def transaction(self) -> Iterator[AuditTransaction]:
        self.locked += 1
        with super().transaction() as transaction:
            yield transaction


def test_appends_take_the_one_statement_path(store_url: str) -> None:
    """A lone writer never needs the locking transaction; a record stored already does."""
    store = LockCountingStore.open(store_url)
    try:
        for n in range(0, 40, 4):
            store.append([make_record(n + i) for i in range(4)])
        assert store.locked == 0
        store.append([make_record(39), make_record(40)])  # 39 is stored: looked up, locked
        assert store.locked == 1
        assert store.count() == 41
    finally:
        store.close()


def test_concurrent_writers_share_one_chain(store_url: str) -> None:
    """Stores appending at once from threads (each its own connection pool, as replicas do)
    race for the head; every record lands once, in one consecutive chain."""
    stores = [AuditStore.open(store_url) for _ in range(4)]
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for n in range(15):
                stores[index].append([make_record(index * 100 + n)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with stores[0].reader() as reader:
            raws = list(reader.raw_records())
        assert [raw.seq for raw in raws] == list(range(1, 61))
        assert len({raw.record_id for raw in raws}) == 60
        for before, after in itertools.pairwise(raws):
            assert after.prev_hash == before.hash
        assert stores[0].head() == Head(60, raws[-1].hash)
    finally:
        for store in stores:
            store.close()


def test_reads_give_back_what_was_written(store: AuditStore) -> None:
    records = [make_record(n, subject_id="alice" if n % 2 else "bob") for n in range(1, 8)]
    store.append(records)
    got = store.get("rec-00003")
    assert got.seq == 3
    assert got.record == records[2]
    assert [entry.record for entry in store.records(page_size=3)] == records
    assert [entry.seq for entry in store.records(after_seq=5)] == [6, 7]
    assert [entry.seq for entry in store.for_subject("alice")] == [1, 3, 5, 7]
    assert [entry.seq for entry in store.for_subject("alice", after_seq=3, limit=1)] == [5]


def test_unknown_record_is_not_found(store: AuditStore) -> None:
    with pytest.raises(AuditRecordNotFound) as caught:
        store.get("nope")
    assert caught.value.field == "record_id"


def test_same_record_again_is_idempotent(store: AuditStore) -> None:
    [first] = store.append([make_record(1)])
    again = store.append([make_record(1), make_record(2), make_record(2)])
    assert [entry.seq for entry in again] == [1, 2, 2]
    assert again[0] == first
    assert store.count() == 2


def test_conflicting_record_fails_the_whole_batch(store: AuditStore) -> None:
    store.append([make_record(1)])
    with pytest.raises(AuditRecordConflict) as caught:
        store.append([make_record(2), make_record(1, caller="someone else")])
    assert caught.value.field == "record_id"
    assert store.count() == 1
    assert store.head().seq == 1


def test_a_record_that_cannot_be_serialized_writes_nothing(store: AuditStore) -> None:
    with pytest.raises(TypeError):
        store.append([make_record(1), make_record(2, params={"not json": {1, 2}})])
    assert store.count() == 0


def test_non_finite_numbers_are_stored_as_null(store: AuditStore) -> None:
    """JSON has no NaN: a model's NaN output is recorded as null, and the chain holds."""
    store.append([make_record(1, outputs=((math.nan, math.inf),)), make_record(2)])
    stored = store.get("rec-00001")
    assert stored.record.outputs == ((None, None),)
    with store.reader() as reader:
        raw = reader.at(1)
    assert raw is not None and '"outputs":[[null,null]]' in raw.content
    assert store.get("rec-00002").prev_hash == stored.hash


def test_rows_follow_the_table_columns() -> None:
    """The insert names the table's columns and gives values in RawRecord's field order."""
    assert [column.name for column in records_table.columns] == [
        field.name for field in dataclasses.fields(RawRecord)
    ]


def test_reopening_keeps_the_chain(store_url: str) -> None:
    with_records = AuditStore.open(store_url)
    with_records.append([make_record(1), make_record(2)])
    with_records.close()
    reopened = AuditStore.open(store_url)
    try:
        assert reopened.head().seq == 2
        assert reopened.append([make_record(3)])[0].seq == 3
    finally:
        reopened.close()


def test_stores_opened_at_once_create_one_schema(store_url: str) -> None:
    opened: list[AuditStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(AuditStore.open(store_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    opened[0].append([make_record(1)])
    assert all(each.count() == 1 for each in opened)
    for each in opened:
        each.close()


def test_urls_that_cannot_work_are_config_errors(tmp_path: Path) -> None:
    for url in ("mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "not a url"):
        with pytest.raises(ConfigError):
            AuditStore.open(url)


def test_sqlite_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(AuditUnavailable):
        AuditStore.open(f"sqlite:///{tmp_path / 'a-file' / 'audit.db'}")


def test_unreachable_postgres_is_unavailable_and_hides_the_password() -> None:
    port = free_port()
    url = f"postgresql://sidelight:s3cret-pw@127.0.0.1:{port}/audit"
    with pytest.raises(AuditUnavailable) as caught:
        AuditStore.open(url)
    assert "s3cret-pw" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)  # for the operator, in the server's log
    # A client is told the store is down, not where it is or who logs in to it.
    from sidelight.transport.status import status_for

    _code, message = status_for(caught.value)
    assert "127.0.0.1" not in message and "sidelight" not in message and str(port) not in message
    assert "audit store" in message


def test_store_down_then_back(private_postgres: PostgresServer) -> None:
    url = create_database(private_postgres.admin_url)
    store = AuditStore.open(url)
    writer = AuditWriter(store)
    try:
        assert store.append([make_record(1)])[0].seq == 1
        private_postgres.stop()
        with pytest.raises(AuditUnavailable, match="unavailable"):
            store.append([make_record(2)])
        with pytest.raises(AuditUnavailable):
            writer.submit(make_record(2)).result(30)
        with pytest.raises(AuditUnavailable):
            store.head()
        private_postgres.start()
        assert store.append([make_record(2)])[0].seq == 2
        assert writer.submit(make_record(3)).result(30) == 3
        assert [entry.record.kind for entry in store.records()] == [RecordKind.EXPLANATION] * 3
    finally:
        writer.close()
        store.close()


def test_a_restart_between_appends_costs_no_failure(private_postgres: PostgresServer) -> None:
    """The appender keeps its connection between batches; when the server restarted meanwhile
    that connection is dead, and the append goes through on a new one, written once."""
    url = create_database(private_postgres.admin_url)
    store = AuditStore.open(url)
    try:
        store.append([make_record(1)])
        private_postgres.stop()
        private_postgres.start()
        assert [entry.seq for entry in store.append([make_record(2), make_record(3)])] == [2, 3]
        assert store.count() == 3
    finally:
        store.close()


def test_schema_and_indexes(store: AuditStore) -> None:
    inspector = inspect(store.engine)
    assert {"audit_records", "audit_head", "audit_checkpoints", "audit_subject_keys"} <= set(
        inspector.get_table_names()
    )
    indexed = {tuple(index["column_names"]) for index in inspector.get_indexes("audit_records")}
    unique = {tuple(c["column_names"]) for c in inspector.get_unique_constraints("audit_records")}
    assert {("subject_id",), ("time",), ("hash",), ("prev_hash",)} <= indexed
    assert ("record_id",) in indexed | unique
    assert inspector.get_pk_constraint("audit_records")["constrained_columns"] == ["seq"]


def test_postgresql_stores_maps_and_ciphertext_uncompressed(postgres_admin_url: str) -> None:
    """pglz on float maps costs the backend CPU the model needs (6x the insert time for
    ResNet-18 maps) to save 14% of the space: those columns are stored as they are, also in a
    store created before this rule (reopening alters it). SQLite never compresses."""
    store_url = create_database(postgres_admin_url)
    store = AuditStore.open(store_url)
    try:

        def storage() -> dict[str, str]:
            with store.engine.connect() as connection:
                rows = connection.execute(
                    sql_text(
                        "SELECT attname, attstorage FROM pg_attribute WHERE attrelid = "
                        "CAST('audit_records' AS regclass) AND attname IN "
                        "('attributions', 'encrypted_input', 'content')"
                    )
                )
                return {name: kind for name, kind in rows}

        assert storage() == {"attributions": "e", "encrypted_input": "e", "content": "x"}
        with store.engine.begin() as connection:  # as an earlier version created it
            connection.execute(
                sql_text("ALTER TABLE audit_records ALTER COLUMN attributions SET STORAGE EXTENDED")
            )
        assert storage()["attributions"] == "x"
        AuditStore.open(store_url).close()
        assert storage()["attributions"] == "e"
    finally:
        store.close()
        drop_database(postgres_admin_url, store_url)


def test_sqlite_commits_durably(tmp_path: Path) -> None:
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        store.close()


def test_sqlite_commits_leave_the_wal_to_be_folded_back_later(tmp_path: Path) -> None:
    """A commit does not copy the WAL into the database file (SQLite would, inside the
    commit crossing 4 MB); `fold_wal` does, once that much was appended, and the records
    read back whole, from the database file alone."""
    path = tmp_path / "audit.db"
    store = AuditStore.open(f"sqlite:///{path}")
    big = bytes(range(256)) * 800  # 200 KB: a 224 x 224 float32 map
    try:
        store.append([make_record(n, attributions=big) for n in range(1, 11)])  # 2 MB
        store.fold_wal()  # not due yet
        small = path.stat().st_size
        assert small < 1 << 20
        for first in (11, 21):  # 4 MB more, in two commits
            store.append([make_record(n, attributions=big) for n in range(first, first + 10)])
        assert path.stat().st_size == small  # no commit folded the WAL back
        store.fold_wal()
        assert path.stat().st_size > 30 * len(big)  # all 30 records are in the database file
        with contextlib.closing(sqlite3.connect(path)) as connection:
            _, log_pages, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert log_pages == copied  # nothing was left in the WAL alone
    finally:
        store.close()
    reopened = AuditStore.open(f"sqlite:///{path}")
    try:
        assert reopened.count() == 30 and reopened.get("rec-00030").record.attributions == big
    finally:
        reopened.close()


def test_a_head_behind_its_records_refuses_appends(store: AuditStore) -> None:
    store.append([make_record(1), make_record(2)])
    sql(store, "UPDATE audit_head SET seq = 1")
    with pytest.raises(AuditUnavailable, match="verify"):
        store.append([make_record(3)])
    assert store.count() == 2


def test_the_sqlite_store_its_wal_and_the_data_folder_are_private(tmp_path: Path) -> None:
    # Records name people and their decisions: no other user of the machine reads them, whatever
    # the umask (0022 made them 0644).
    from sidelight.audit.log import AuditLog
    from sidelight.settings import AuditSettings

    folder = tmp_path / "audit"
    log = AuditLog.open(AuditSettings(data_dir=folder))
    assert log is not None
    try:
        log.store.append([make_record(1)])
        files = sorted(p.name for p in folder.iterdir())
        assert {"audit.db", "audit.db-wal"} <= set(files)
        for path in folder.iterdir():
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} is {oct(path.stat().st_mode)}"
        assert folder.stat().st_mode & 0o077 == 0
    finally:
        log.close()
