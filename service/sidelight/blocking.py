"""Blocking calls to one dependency (Redis, the audit store), each kind on a thread pool of its
own, so that a dependency that hangs holds its own threads and nobody else's.

    job_calls = BlockingCalls("job queue", threads=8, wait_s=5.0)
    status = await job_calls.run(queue.status, job_id)

The event loop's default pool (`asyncio.to_thread`) has cores + 4 threads, shared by every RPC:
when a stopped Redis held them all, an unrelated GetAuditRecord waited 14.5 s for a thread. Here
a call waits at most `wait_s` for one of its pool's threads, then fails with Unavailable; the
call itself is bounded by the dependency client's own timeout (Redis: its socket timeout). So a
hung dependency costs a call at most `wait_s` plus that timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from sidelight.errors import Unavailable

P = ParamSpec("P")
T = TypeVar("T")


class BlockingCalls:
    def __init__(self, name: str, *, threads: int, wait_s: float) -> None:
        if threads < 1 or wait_s <= 0:
            raise ValueError("threads must be >= 1 and wait_s > 0")
        self.name = name  # "job queue": in messages, and in the threads' names
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name.replace(" ", "-"))
        self._threads = threads
        self._wait_s = wait_s
        # One per thread, held until the thread is done with the call (not until its caller
        # stops waiting: a cancelled RPC's call may still hold the thread), so a call admitted
        # never queues behind a stuck thread. Made on first use, on the loop that uses it.
        self._slots: asyncio.Semaphore | None = None

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`call(*args, **kwargs)` on this pool; Unavailable if no thread frees up in time."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._threads)
        slots = self._slots
        try:
            async with asyncio.timeout(self._wait_s):
                await slots.acquire()
        except TimeoutError:
            raise Unavailable(
                f"{self.name}: all {self._threads} threads busy for {self._wait_s:g}s "
                "(it is not answering)",
                public=f"the {self.name} is not answering: retry later",
            ) from None
        loop = asyncio.get_running_loop()

        def release(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(slots.release)

        try:
            running = self._pool.submit(functools.partial(call, *args, **kwargs))
        except BaseException:
            slots.release()
            raise
        running.add_done_callback(release)
        return await asyncio.wrap_future(running)

    def close(self) -> None:
        """Stop taking calls; a thread stuck in a call ends on the call's own timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)
