"""The parser assembled from every command group's module (sidelight.cli.main)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from sidelight.cli.main import build_parser


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path, parser
    for group in groups:
        for name, child in group.choices.items():
            yield from leaves(child, (*path, name))


def test_every_command_runs_something() -> None:
    commands = dict(leaves(build_parser()))
    assert {
        ("serve",),
        ("worker",),
        ("sanity",),
        ("quality-report",),
        ("audit", "verify"),
        ("models", "build-demo"),
        ("explain",),
        ("predict",),
        ("jobs", "watch"),
    } <= set(commands)
    missing = [
        " ".join(path)
        for path, parser in commands.items()
        if not callable(parser.get_default("run"))
    ]
    assert missing == []
