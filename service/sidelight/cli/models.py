"""`sidelight models build-demo|list`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidelight.cli.common import DEFAULT_SERVER


def add_commands(commands: Any) -> None:
    models = commands.add_parser("models", help="model repository tools")
    model_commands = models.add_subparsers(required=True, metavar="command")
    build = model_commands.add_parser("build-demo", help="train and export the demo models")
    build.add_argument("--out", type=Path, default=Path("var/model-repository"))
    build.add_argument("--samples", type=Path, default=Path("var/samples"))
    build.add_argument("--only", action="append", choices=["digits", "breast_cancer", "resnet18"])
    build.set_defaults(run=_build_demo)
    listing = model_commands.add_parser("list", help="the models a server offers")
    listing.add_argument("--server", default=DEFAULT_SERVER)
    listing.set_defaults(run=_list_models)


def _build_demo(args: argparse.Namespace) -> int:
    from sidelight.demo.build import build_demo

    for report in build_demo(args.out, args.samples, args.only):
        accuracy = "" if report.accuracy is None else f" (held-out accuracy {report.accuracy:.3f})"
        print(f"built {report.name} in {report.path}{accuracy}")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    from sidelight.client import Client

    with Client(args.server) as client:
        for model in client.list_models().models:
            methods = ", ".join(m.name for m in model.methods)
            print(
                f"{model.name} v{model.latest_version} [{model.task}] input "
                f"{list(model.input.shape)} {model.input.dtype}: {methods}"
            )
    return 0
