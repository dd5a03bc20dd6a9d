"""`sidelight sanity`: model-parameter randomization checks, here or as a job on a server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sidelight.cli.explain import model_info
from sidelight.cli.jobs import follow_job


def add_commands(commands: Any) -> None:
    sanity = commands.add_parser(
        "sanity", help="model-parameter randomization checks of a model's methods"
    )
    sanity.add_argument("--model-repository", type=Path, default=Path("var/model-repository"))
    sanity.add_argument("--model", required=True)
    sanity.add_argument("--version", default="")
    sanity.add_argument(
        "--methods", default="", help="comma-separated (default: every gradient and CAM method)"
    )
    sanity.add_argument("--input", type=Path, help="instances to explain (.npy); default: samples")
    sanity.add_argument("--samples", type=int, default=32, help="instances, when no --input")
    sanity.add_argument("--mode", choices=["cascading", "independent"], default="cascading")
    sanity.add_argument("--out", type=Path, default=Path("sanity"), help="folder for JSON and PNG")
    sanity.add_argument("--seed", type=int, default=0)
    sanity.add_argument(
        "--data-randomization",
        action="store_true",
        help="also compare with the demo digits network retrained on permuted labels",
    )
    sanity.add_argument(
        "--server",
        default="",
        help="run as a job through this server's queue (host:port) instead of in this process",
    )
    sanity.set_defaults(run=_sanity)


def _sanity(args: argparse.Namespace) -> int:
    """Explain sample inputs with the trained model and at each randomization depth; print a
    table, write JSON and a PNG grid; exit 1 when a method the config holds to its threshold
    still resembles the trained model's maps after full randomization. In this process, or
    with --server as a job through that server's queue (the server's workers run it)."""
    import torch
    from sidelight_handlers.image import render_grid

    from sidelight.methods.base import Mode
    from sidelight.methods.catalog import METHODS, check_model
    from sidelight.models.registry import ModelRegistry
    from sidelight.quality.sanity import PERMUTED, sanity_check

    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    if args.server:
        if args.data_randomization:
            raise ValueError("--data-randomization retrains a model here: not with --server")
        outcome = _sanity_job(args, names)
        if outcome is None:
            return 1
    else:
        registry = ModelRegistry.load(args.model_repository, [torch.device("cpu")], check_model)
        entry = registry.get(args.model, args.version)
        model = entry.primary
        permuted = _permuted_labels_model(args, model) if args.data_randomization else None
        names = names or [m for m in model.config.methods if METHODS[m].mode is Mode.SYNC]
        inputs = _sanity_inputs(args, model.name, model.input_shape)
        outcome = sanity_check(
            model,
            entry.version,
            names,
            inputs,
            mode=args.mode,
            seed=args.seed,
            permuted=permuted,
        )
    _print_sanity(outcome)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"sanity-{outcome.model}-{outcome.mode}"
    report = outcome.to_json()
    for entry_ in report["methods"].values():
        del entry_["maps"]  # in the PNG
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    if outcome.reports:
        permuted_column = [PERMUTED] if outcome.reports[0].rows[-1].depth == PERMUTED else []
        columns = ["trained", *outcome.reports[0].layers, *permuted_column]
        render_grid(
            [(r.method, r.maps) for r in outcome.reports], columns, args.out / f"{stem}.png"
        )
    print(f"wrote {args.out / stem}.json and .png")
    if outcome.failed:
        print(f"FAILED the sanity threshold: {', '.join(outcome.failed)}", file=sys.stderr)
        return 1
    return 0


def _print_sanity(outcome: Any) -> None:
    print(
        f"{outcome.mode} randomization of {outcome.model} v{outcome.version}, "
        f"{outcome.instances} inputs; mean Spearman against the trained model's maps"
    )
    header = ("method", "depth", "rho", "|rho|", "rho nz", "|rho| nz", "SSIM")
    print("{:22s} {:24s} {:>7s} {:>7s} {:>7s} {:>8s} {:>6s}".format(*header))
    for report in outcome.reports:
        for row in report.rows:
            ssim = "" if row.ssim is None else f"{row.ssim:6.3f}"
            print(
                f"{report.method:22s} {row.depth:24s} {row.spearman:7.3f} "
                f"{row.spearman_abs:7.3f} {row.spearman_nonzero:7.3f} "
                f"{row.spearman_abs_nonzero:8.3f} {ssim:>6s}"
            )


def _sanity_job(args: argparse.Namespace, names: list[str]) -> Any:
    """Submit the checks to the server's queue, follow the job, return its outcome."""
    from sidelight.client import Client
    from sidelight.quality.sanity import SanityOutcome

    with Client(args.server) as client:
        info = model_info(client, args.model)
        inputs = _sanity_inputs(args, info.name, tuple(info.input.shape)).numpy()
        job = client.submit_sanity_check(
            args.model,
            inputs,
            names,
            model_version=args.version,
            mode=args.mode,
            seed=args.seed,
        )
        last = follow_job(client, job)
    if last is None:
        return None
    return SanityOutcome.from_json(json.loads(last.sanity_report_json))


def _permuted_labels_model(args: argparse.Namespace, model: Any) -> Any:
    """The demo digits network retrained on permuted labels, exported and loaded as the
    service loads models (same config)."""
    import shutil
    import tempfile

    import torch

    from sidelight.demo.build import export_program, train_digits
    from sidelight.models.config import load_config
    from sidelight.models.loaders import load_model

    if model.name != "digits" or model.input_shape != (1, 8, 8):
        raise ValueError("--data-randomization retrains the demo digits model only")
    network, _x_train, x_test, _y_test = train_digits(args.seed, permute_labels=True)
    folder = Path(tempfile.mkdtemp(prefix="sidelight-permuted-")) / "digits"
    export_program(network, torch.from_numpy(x_test[:2]), folder / "1" / "model.pt2")
    shutil.copyfile(args.model_repository / "digits" / "config.yaml", folder / "config.yaml")
    for extra in ("background.npy",):
        source = args.model_repository / "digits" / extra
        if source.exists():
            shutil.copyfile(source, folder / extra)
    return load_model(folder, "1", load_config(folder / "config.yaml"), torch.device("cpu"))


def _sanity_inputs(args: argparse.Namespace, name: str, shape: tuple[int, ...]) -> Any:
    import torch

    if args.input is not None:
        array = np.load(args.input, allow_pickle=False).astype(np.float32)
        return torch.from_numpy(array[None] if array.ndim == len(shape) else array)
    from sklearn.datasets import load_breast_cancer, load_digits

    if shape == (1, 8, 8):
        images = load_digits().images[-args.samples :] / 16.0
        return torch.from_numpy(images.astype(np.float32)[:, None])
    if shape == (30,):
        return torch.from_numpy(load_breast_cancer().data[-args.samples :].astype(np.float32))
    raise ValueError(f"model {name!r}: give --input (a .npy of instances)")
