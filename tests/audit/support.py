"""Helpers of the audit tests: a private PostgreSQL server, records with small fake content,
and tampering by SQL, the way someone with access to the database would do it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from glob import glob
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sidelight.audit.record import AuditRecord, FeatureWeight, RecordKind
from sidelight.audit.recording import GRID
from sidelight.audit.store import AuditStore
from sqlalchemy import text
from sqlalchemy.engine import make_url

BASE_TIME = 1_700_000_000.0


def make_record(n: int, *, subject_id: str = "subject-1", **fields: Any) -> AuditRecord:
    """Record number `n`: made at BASE_TIME + n, attributions all equal to n."""
    values: dict[str, Any] = {
        "record_id": f"rec-{n:05d}",
        "kind": RecordKind.EXPLANATION,
        "time": BASE_TIME + n,
        "caller": "test",
        "request_id": f"req-{n}",
        "subject_id": subject_id,
        "model": "m",
        "model_version": "1",
        "model_digest": "d" * 64,
        "method": "saliency",
        "params": {"abs": True},
        "seed": n,
        "input_dtype": "FP32",
        "input_shape": (1, 4),
        "outputs": ((0.25, 0.75),),
        "targets": (1,),
        "summary": ((FeatureWeight("f0", 0.5), FeatureWeight("f1", -0.25)),),
        "attributions_shape": (1, 4),
        "attributions": np.full(4, n, dtype="<f4").tobytes(),
        "versions": {"captum": "0.9.0"},
    }
    values.update(fields)
    return AuditRecord(**values)


def regions_by_hand(attributions: np.ndarray) -> tuple[list[list[float]], list[str]]:
    """Each instance's sum over every cell of a GRID x GRID split (np.array_split's), with
    the channels added up, looping over cells; and the cells' row/column ranges."""
    n, height, width = attributions.shape[0], *attributions.shape[-2:]
    rows = np.array_split(np.arange(height), min(GRID, height))
    cols = np.array_split(np.arange(width), min(GRID, width))
    sums = []
    for i in range(n):
        plane = attributions[i].reshape(-1, height, width).astype(np.float64)
        sums.append(
            [
                float(plane[:, row[0] : row[-1] + 1, col[0] : col[-1] + 1].sum())
                for row in rows
                for col in cols
            ]
        )
    spans = [
        f"rows {row[0] + 1}-{row[-1] + 1}, columns {col[0] + 1}-{col[-1] + 1}"
        for row in rows
        for col in cols
    ]
    return sums, spans


def top_regions(attributions: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """Per instance, the k cells with the largest |sum| (ties: the earlier cell), by hand."""
    sums, spans = regions_by_hand(attributions)
    ranked = []
    for cells in sums:
        order = sorted(range(len(cells)), key=lambda j: -abs(cells[j]))[:k]
        ranked.append([(spans[j], cells[j]) for j in order])
    return ranked


# -- tampering, in SQL ---------------------------------------------------------------------


def sql(store: AuditStore, statement: str, **params: Any) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(statement), params)


def row(store: AuditStore, seq: int) -> Any:
    with store.engine.connect() as connection:
        return connection.execute(
            text("SELECT * FROM audit_records WHERE seq = :seq"), {"seq": seq}
        ).one()


def modify(store: AuditStore, seq: int) -> None:
    """Change a field that no column repeats; leave the hash alone."""
    sql(
        store,
        'UPDATE audit_records SET content = replace(content, \'"caller":"test"\', '
        '\'"caller":"mallory"\') WHERE seq = :seq',
        seq=seq,
    )


def modify_rehashed(store: AuditStore, seq: int) -> bytes:
    """Change the content and recompute the record's own hash; returns the new hash."""
    old = row(store, seq)
    content = old.content.replace('"caller":"test"', '"caller":"mallory"')
    digest = hashlib.sha256(bytes(old.prev_hash) + content.encode()).digest()
    sql(
        store,
        "UPDATE audit_records SET content = :content, hash = :hash WHERE seq = :seq",
        content=content,
        hash=digest,
        seq=seq,
    )
    return digest


def rewrite_from(store: AuditStore, seq: int) -> None:
    """Change record `seq` and recompute every hash and link after it, and the head: a
    consistent chain that only a signed checkpoint contradicts."""
    digest = modify_rehashed(store, seq)
    following = seq + 1
    while True:
        try:
            current = row(store, following)
        except Exception:
            break
        digest_next = hashlib.sha256(digest + current.content.encode()).digest()
        sql(
            store,
            "UPDATE audit_records SET prev_hash = :prev, hash = :hash WHERE seq = :seq",
            prev=digest,
            hash=digest_next,
            seq=following,
        )
        digest = digest_next
        following += 1
    sql(store, "UPDATE audit_head SET seq = :seq, hash = :hash", seq=following - 1, hash=digest)


def delete(store: AuditStore, *seqs: int) -> None:
    for seq in seqs:
        sql(store, "DELETE FROM audit_records WHERE seq = :seq", seq=seq)


def swap(store: AuditStore, a: int, b: int) -> None:
    """Exchange the positions of two records."""
    sql(store, "UPDATE audit_records SET seq = -1 WHERE seq = :a", a=a)
    sql(store, "UPDATE audit_records SET seq = :a WHERE seq = :b", a=a, b=b)
    sql(store, "UPDATE audit_records SET seq = :b WHERE seq = -1", b=b)


def insert_raw(store: AuditStore, seq: int, prev_hash: bytes, record: AuditRecord) -> None:
    """A forged record at `seq`, hashed properly over `prev_hash`."""
    content = record.canonical_content()
    sql(
        store,
        "INSERT INTO audit_records (seq, record_id, kind, time, subject_id, model, prev_hash, "
        "hash, content, attributions, encrypted_input) VALUES (:seq, :record_id, :kind, :time, "
        ":subject_id, :model, :prev_hash, :hash, :content, :attributions, :encrypted_input)",
        seq=seq,
        record_id=record.record_id,
        kind=record.kind.value,
        time=record.time,
        subject_id=record.subject_id,
        model=record.model,
        prev_hash=prev_hash,
        hash=hashlib.sha256(prev_hash + content).digest(),
        content=content.decode(),
        attributions=record.attributions,
        encrypted_input=record.encrypted_input,
    )


def shift_up(store: AuditStore, from_seq: int) -> None:
    """seq + 1 for every record from `from_seq` on (in two steps: seq is a primary key)."""
    sql(store, "UPDATE audit_records SET seq = -seq - 1 WHERE seq >= :s", s=from_seq)
    sql(store, "UPDATE audit_records SET seq = -seq WHERE seq < 0")


# -- a private PostgreSQL ----------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin, or the folder of `initdb` on PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throwaway cluster in a temporary folder, listening on a free loopback port. Run as
    the `postgres` user when we are root (PostgreSQL refuses to run as root)."""

    def __init__(self, bindir: Path) -> None:
        self._bindir = bindir
        # Not under pytest's tmp_path: its parents are private to root, and postgres must enter.
        self.folder = Path(tempfile.mkdtemp(prefix="sidelight-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync",
        )  # fmt: skip
        self.start()

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c max_connections=200 "
            "-c fsync=off -c full_page_writes=off"  # a test cluster: speed over crash safety
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


def create_database(admin_url: str) -> str:
    """A fresh, empty database on the server of `admin_url`; returns its URL."""
    name = f"audit_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    with psycopg.connect(_libpq(admin_url), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(url: str) -> str:
    """The URL as libpq reads it (no "+psycopg" in the scheme)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
