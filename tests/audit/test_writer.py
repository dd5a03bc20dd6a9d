"""The group-commit writer: many threads, an event loop and several processes writing into
one store get distinct, consecutive seqs, and the chain verifies."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import wait_until
from sidelight.audit.record import AuditRecord
from sidelight.audit.signing import Signer
from sidelight.audit.store import AuditStore, StoredRecord
from sidelight.audit.verify import verify
from sidelight.audit.writer import AuditWriter
from sidelight.errors import AuditRecordConflict, AuditUnavailable

from .support import make_record

HERE = Path(__file__).parent


def test_many_threads_one_chain(store: AuditStore, signer: Signer) -> None:
    threads, each = 16, 25
    writer = AuditWriter(store, signer, max_batch=64, checkpoint_every=100)
    seqs: list[int] = []
    lock = threading.Lock()

    def write(thread: int) -> None:
        futures = [writer.submit(make_record(thread * 1000 + n)) for n in range(each)]
        got = [future.result(60) for future in futures]
        with lock:
            seqs.extend(got)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    writer.close()
    assert sorted(seqs) == list(range(1, threads * each + 1))
    assert store.count() == threads * each
    report = verify(store, signer.public_key)
    assert report.ok, report.problems
    assert report.last_checkpoint is not None
    assert report.last_checkpoint.seq == threads * each  # signed once more at close


def test_writes_from_an_event_loop(store: AuditStore) -> None:
    writer = AuditWriter(store)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(writer.write(make_record(n)) for n in range(50))))

    try:
        seqs = asyncio.run(main())
    finally:
        writer.close()
    assert sorted(seqs) == list(range(1, 51))
    assert [store.get(f"rec-{n:05d}").seq for n in range(50)] == seqs


class CountingStore(AuditStore):
    """The real store, noting the size of every batch the writer appends."""

    batches: list[int]

    def append(self, batch: Sequence[AuditRecord]) -> list[StoredRecord]:
        self.batches.append(len(batch))
        return super().append(batch)


def test_one_turn_of_the_loop_is_one_batch(store_url: str) -> None:
    """Records written during one turn of the event loop reach the writer together: 40
    coroutines resumed at once cost one transaction, not 40 wake-ups of the writer."""
    store = CountingStore.open(store_url)
    store.batches = []
    writer = AuditWriter(store, max_batch=256)

    async def main() -> list[int]:
        release = asyncio.Event()

        async def one(n: int) -> int:
            await release.wait()  # all resume in the same turn
            return await writer.write(make_record(n))

        tasks = [asyncio.create_task(one(n)) for n in range(40)]
        await asyncio.sleep(0)
        release.set()
        return list(await asyncio.gather(*tasks))

    try:
        seqs = asyncio.run(main())
    finally:
        writer.close()
        store.close()
    assert sorted(seqs) == list(range(1, 41))
    assert store.batches == [40]


class FoldingStore(AuditStore):
    """The real store, noting for each WAL fold whether the last batch's callers had their
    answers by then."""

    answered: list[bool]
    futures: list[Future[int]]

    def fold_wal(self) -> None:
        self.answered.append(all(future.done() for future in self.futures))
        super().fold_wal()


def test_the_wal_is_folded_back_after_the_callers_are_answered(tmp_path: Path) -> None:
    store = FoldingStore.open(f"sqlite:///{tmp_path / 'audit.db'}")
    store.answered, store.futures = [], []
    writer = AuditWriter(store)
    try:
        for n in range(1, 4):
            store.futures = [writer.submit(make_record(n))]
            store.futures[0].result(timeout=30)
            wait_until(lambda n=n: len(store.answered) == n, 30, "the writer to fold the WAL")
    finally:
        writer.close()
        store.close()
    assert store.answered == [True, True, True]


def test_records_of_a_turn_that_ends_after_close_are_refused(store: AuditStore) -> None:
    writer = AuditWriter(store)

    async def main() -> None:
        pending = asyncio.ensure_future(writer.write(make_record(1)))
        await asyncio.sleep(0)  # write() queued its record for the end of this turn
        writer.close()
        with pytest.raises(AuditUnavailable, match="closed"):
            await pending

    asyncio.run(main())
    assert store.count() == 0


def test_close_writes_everything_submitted(store: AuditStore) -> None:
    writer = AuditWriter(store, max_batch=8)
    futures = [writer.submit(make_record(n)) for n in range(100)]
    writer.close()
    assert all(future.done() for future in futures)
    assert store.count() == 100
    with pytest.raises(AuditUnavailable, match="closed"):
        writer.submit(make_record(101))


def test_a_conflict_fails_only_its_own_record(store: AuditStore) -> None:
    store.append([make_record(1)])
    writer = AuditWriter(store, max_batch=64)
    futures: list[Future[int]] = [writer.submit(make_record(n)) for n in range(2, 6)]
    conflicting = writer.submit(make_record(1, caller="another"))
    futures += [writer.submit(make_record(n)) for n in range(6, 9)]
    retry = writer.submit(make_record(1))
    writer.close()
    with pytest.raises(AuditRecordConflict):
        conflicting.result(10)
    assert retry.result(10) == 1
    assert sorted(future.result(10) for future in futures) == list(range(2, 9))


def test_checkpoints_every_n_records_and_at_close(store: AuditStore, signer: Signer) -> None:
    writer = AuditWriter(store, signer, checkpoint_every=10, max_batch=5)
    for n in range(35):
        writer.submit(make_record(n)).result(10)
    writer.close()
    seqs = [signed.checkpoint.seq for signed in store.checkpoints()]
    assert seqs == [10, 20, 30, 35]


def test_checkpoints_when_the_interval_passes(store: AuditStore, signer: Signer) -> None:
    writer = AuditWriter(store, signer, checkpoint_interval_s=0.1)
    try:
        writer.submit(make_record(1)).result(10)
        wait_until(store.checkpoints, 10, "the interval's checkpoint")
        assert [signed.checkpoint.seq for signed in store.checkpoints()] == [1]
    finally:
        writer.close()
    assert len(store.checkpoints()) == 1  # nothing new since: no second checkpoint at close


def test_processes_write_into_one_chain(store_url: str, signer: Signer) -> None:
    """Several processes, each with its own store and writer, started together on a store
    that none of them has created yet."""
    processes, each = 4, 60
    started = [
        subprocess.Popen(
            [sys.executable, str(HERE / "append_worker.py"), store_url, f"p{p}", str(each)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in range(processes)
    ]
    seqs: list[int] = []
    for process in started:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        seqs += json.loads(out)
    assert sorted(seqs) == list(range(1, processes * each + 1))
    store = AuditStore.open(store_url)
    try:
        assert store.count() == processes * each
        report = verify(store, signer.public_key)
        assert report.ok, report.problems
    finally:
        store.close()
