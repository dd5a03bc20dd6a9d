"""Explanation, job and audit record ids guard what they name: they come from the operating
system's CSPRNG, so that no id can be foretold from others (a seeded generator's state is
recovered from a few hundred outputs, and a forked process repeats its parent's)."""

from __future__ import annotations

import os

from sidelight.explanations import new_explanation_id


def test_ids_are_unpredictable_even_across_a_fork() -> None:
    new_explanation_id()  # whatever state there is, the parent has used it
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only writes its next id and leaves
        os.close(read)
        os.write(write, new_explanation_id().encode())
        os._exit(0)
    os.close(write)
    ours = new_explanation_id()
    with os.fdopen(read, "rb") as pipe:
        theirs = pipe.read().decode()
    os.waitpid(child, 0)
    assert len(theirs) == 32 and theirs != ours


def test_ids_are_32_hex_digits_and_distinct() -> None:
    ids = {new_explanation_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
