"""`sidelight`'s entry point: the parser made of every command group's, and the one place that
reads the environment (for `serve` and `worker`: sidelight.cli.config).

Settings are built by each command, once, from the arguments, and passed down. Nothing heavy
is imported before a command runs, so that `sidelight --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from sidelight.audit.commands import add_commands as add_audit_commands
from sidelight.cli import explain, jobs, models, quality_report, sanity, serve, worker
from sidelight.cli.config import describe, read_secret_files, resolve
from sidelight.errors import SidelightError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import grpc

    from sidelight.methods import EXPECTED_LIBRARY_WARNINGS

    for message in EXPECTED_LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    try:
        if hasattr(args, "config_options"):
            resolved = resolve(args, os.environ)
            logging.getLogger("sidelight.cli").info("%s", describe(resolved))
        else:  # the audit commands: no environment or config file, but --audit-url-file
            read_secret_files(args)
        return int(args.run(args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except SidelightError as exc:  # e.g. an audit record not found, a subject erased
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidelight", description="Explanation service for production machine learning."
    )
    commands = parser.add_subparsers(required=True, metavar="command")
    serve.add_commands(commands)
    worker.add_commands(commands)
    add_audit_commands(commands)
    models.add_commands(commands)
    explain.add_commands(commands)
    sanity.add_commands(commands)
    quality_report.add_commands(commands)
    jobs.add_commands(commands)
    return parser
