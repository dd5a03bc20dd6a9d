"""Fixtures of the audit tests. Every store test runs twice: against SQLite (a file in the
test's folder) and against a real PostgreSQL that the session starts itself (initdb and pg_ctl
on a free loopback port, via `runuser -u postgres` when run as root), each test in a fresh
database. SIDELIGHT_TEST_POSTGRES_URL names another server to use instead (its user must be
allowed to create databases)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore

from .support import PostgresServer, create_database, drop_database, postgres_bin

POSTGRES_URL_ENV = "SIDELIGHT_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    given = os.environ.get(POSTGRES_URL_ENV)
    if given:
        yield given
        return
    bindir = postgres_bin()
    if bindir is None:
        pytest.fail(
            f"PostgreSQL is not installed (Debian: apt-get install postgresql) and "
            f"{POSTGRES_URL_ENV} is not set"
        )
    server = PostgresServer(bindir)
    yield server.admin_url
    server.remove()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, which it may stop and start."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    server = PostgresServer(bindir)
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    url = create_database(admin_url)
    yield url
    drop_database(admin_url, url)


@pytest.fixture
def store(store_url: str) -> Iterator[AuditStore]:
    opened = AuditStore.open(store_url)
    yield opened
    opened.close()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer.load_or_create(tmp_path / "keys" / "signing-key.pem")
