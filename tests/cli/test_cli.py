"""The `sidelight` command against the session's real server.

Most cases call `sidelight.cli.main(argv)` in-process (no interpreter start-up); two run the
installed `sidelight` script as a subprocess, as a user would. Sample inputs are written here from
scikit-learn's data, in the formats the README's samples use (PNG, .npy, .json) and CSV.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ServerThread
from PIL import Image
from sidelight.cli import main
from sidelight.client import Client, to_array
from sklearn.datasets import load_breast_cancer, load_digits

SIDELIGHT = Path(sys.executable).with_name("sidelight")  # the venv's console script
DIGITS_PER_FILE = 16
CANCER_ROWS = 4


@dataclass(frozen=True)
class Samples:
    folder: Path
    digit_pngs: dict[int, Path]  # true label -> PNG of that digit
    digit_arrays: np.ndarray[Any, Any]  # the 16 digits in digits.npy, N x 1 x 8 x 8 in [0, 1]
    digit_labels: list[int]
    cancer_rows: np.ndarray[Any, Any]  # the rows in breast_cancer.npy, N x 30
    feature_names: list[str]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    folder = tmp_path_factory.mktemp("samples")
    digits = load_digits()
    images = (digits.images[:DIGITS_PER_FILE] / 16.0).astype(np.float32)[:, None]
    np.save(folder / "digits.npy", images)
    pngs = {}
    for index in range(DIGITS_PER_FILE):
        label = int(digits.target[index])
        if label in (0, 3, 7) and label not in pngs:
            pixels = (images[index, 0] * 255).round().astype(np.uint8)
            pngs[label] = folder / f"digit_{label}.png"
            Image.fromarray(pixels).save(pngs[label])
    assert len(pngs) == 3

    cancer = load_breast_cancer()
    names = [str(n) for n in cancer.feature_names]
    rows = cancer.data[:CANCER_ROWS].astype(np.float32)
    np.save(folder / "breast_cancer.npy", rows)
    (folder / "breast_cancer.json").write_text(
        json.dumps(dict(zip(names, map(float, rows[0]), strict=True)), indent=1)
    )
    (folder / "breast_cancer_lists.json").write_text(json.dumps(rows[:2].tolist()))
    with (folder / "breast_cancer.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(names)
        writer.writerows(rows[:3].tolist())
    return Samples(
        folder,
        pngs,
        images,
        [int(t) for t in digits.target[:DIGITS_PER_FILE]],
        rows,
        names,
    )


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def predictions(out: str) -> list[tuple[str, float]]:
    """(label, p) from `predict`'s lines, in instance order."""
    found = re.findall(r"^instance (\d+): (.+) \(p = ([0-9.]+)\)$", out, re.MULTILINE)
    assert [int(i) for i, _, _ in found] == list(range(len(found))), out
    return [(label, float(p)) for _, label, p in found]


def open_png(path: Path) -> np.ndarray[Any, Any]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def distinct_colours(pixels: np.ndarray[Any, Any]) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def test_models_list(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "models", "list", "--server", server.address)
    assert code == 0, err
    lines = {line.split(" ", 1)[0]: line for line in out.splitlines()}
    assert set(lines) == {"digits", "breast_cancer", "breast_cancer_onnx", "tiny_torchscript"}
    assert lines["digits"].startswith("digits v1 [image_classification] input [1, 8, 8] FP32: ")
    assert "grad_cam" in lines["digits"] and "integrated_gradients" in lines["digits"]
    assert lines["breast_cancer"].startswith(
        "breast_cancer v1 [tabular_classification] input [30] FP32: "
    )
    assert "grad_cam" not in lines["breast_cancer"]
    assert "integrated_gradients" in lines["breast_cancer"]


def test_predict_a_digit_png(
    server: ServerThread, samples: Samples, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(server.address) as client:
        for label, png in samples.digit_pngs.items():
            code, out, err = cli(
                capsys, "predict", "--server", server.address, "--model", "digits", "--input", png
            )
            assert code == 0, err
            [(printed, p)] = predictions(out)
            # The server's answer for the original pixels (the PNG holds them to 1/255).
            index = samples.digit_labels.index(label)
            reply = client.predict("digits", samples.digit_arrays[index : index + 1])
            expected = int(reply.predicted[0])
            assert printed == str(expected)
            assert p == pytest.approx(float(to_array(reply.outputs)[0, expected]), abs=0.01)
            assert 0.1 < p <= 1.0


def test_predict_a_stack_of_digits(
    server: ServerThread, samples: Samples, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        capsys,
        "predict",
        "--server",
        server.address,
        "--model",
        "digits",
        "--input",
        samples.folder / "digits.npy",
    )
    assert code == 0, err
    found = predictions(out)
    assert len(found) == DIGITS_PER_FILE
    right = sum(
        label == str(true) for (label, _), true in zip(found, samples.digit_labels, strict=True)
    )
    assert right >= DIGITS_PER_FILE - 2, out  # the demo model is >95% accurate


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("breast_cancer.json", 1),
        ("breast_cancer.csv", 3),
        ("breast_cancer.npy", CANCER_ROWS),
        ("breast_cancer_lists.json", 2),
    ],
)
def test_predict_tabular_rows_from_every_format(
    server: ServerThread,
    samples: Samples,
    capsys: pytest.CaptureFixture[str],
    name: str,
    rows: int,
) -> None:
    code, out, err = cli(
        capsys,
        "predict",
        "--server",
        server.address,
        "--model",
        "breast_cancer",
        "--input",
        samples.folder / name,
    )
    assert code == 0, err
    found = predictions(out)
    with Client(server.address) as client:
        reply = client.predict("breast_cancer", samples.cancer_rows[:rows])
    labels = ["malignant", "benign"]
    assert [label for label, _ in found] == [labels[i] for i in reply.predicted]
    assert all(0.5 <= p <= 1.0 for _, p in found)  # the predicted one of two classes


def test_explain_a_digit_with_grad_cam(
    server: ServerThread, samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_png, out_json = tmp_path / "x.png", tmp_path / "x.json"
    code, out, err = cli(
        capsys,
        "explain",
        "--server",
        server.address,
        "--model",
        "digits",
        "--method",
        "grad_cam",
        "--input",
        samples.digit_pngs[3],
        "--out",
        out_png,
        "--json",
        out_json,
    )
    assert code == 0, err
    assert re.match(rf"explanation [0-9a-f]{{32}}: wrote {re.escape(str(out_png))}\n", out), out
    assert "instance 0: grad_cam: " in out

    pixels = open_png(out_png)
    assert pixels.shape == (300, 900, 3)  # one row of three 3-inch panels at 100 dpi
    assert pixels.std() > 10
    heat_panel = pixels[:, 300:600]  # the attribution map: a colour map, not a flat picture
    assert distinct_colours(heat_panel) > 20

    numbers = json.loads(out_json.read_text())
    attributions = np.array(numbers["attributions"])
    assert attributions.ndim == 4 and attributions.shape[:2] == (1, 1)  # N x 1 x h x w maps
    assert np.isfinite(attributions).all() and np.abs(attributions).max() > 0
    outputs = np.array(numbers["outputs"])
    assert outputs.shape == (1, 10) and outputs.sum() == pytest.approx(1.0, abs=1e-4)
    assert numbers["targets"] == [int(outputs.argmax())]
    assert re.fullmatch(r"[0-9a-f]{32}", numbers["explanation_id"])


def test_explain_a_stack_of_digits_with_a_chosen_target(
    server: ServerThread, samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = tmp_path / "two.npy"
    np.save(stack, samples.digit_arrays[:2])
    code, _, err = cli(
        capsys,
        "explain",
        "--server",
        server.address,
        "--model",
        "digits",
        "--method",
        "saliency",
        "--target",
        "5",
        "--input",
        stack,
        "--out",
        tmp_path / "two.png",
        "--json",
        tmp_path / "two.json",
    )
    assert code == 0, err
    assert open_png(tmp_path / "two.png").shape == (600, 900, 3)  # one row per instance
    numbers = json.loads((tmp_path / "two.json").read_text())
    assert numbers["targets"] == [5, 5]
    assert np.array(numbers["attributions"]).shape == (2, 1, 8, 8)


def explain_cancer(
    capsys: pytest.CaptureFixture[str], address: str, source: Path, folder: Path, *extra: str
) -> dict[str, Any]:
    out_json = folder / f"{source.stem}-{len(extra)}.json"
    code, out, err = cli(
        capsys,
        "explain",
        "--server",
        address,
        "--model",
        "breast_cancer",
        "--method",
        "integrated_gradients",
        "--input",
        source,
        "--out",
        folder / "y.png",
        "--json",
        out_json,
        *extra,
    )
    assert code == 0, err
    assert re.search(r"instance 0: integrated_gradients: \w+ \(p = [0-9.]+\), completeness", out)
    numbers: dict[str, Any] = json.loads(out_json.read_text())
    return numbers


def test_explain_a_tabular_row_with_integrated_gradients(
    server: ServerThread, samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    numbers = explain_cancer(
        capsys, server.address, samples.folder / "breast_cancer.json", tmp_path
    )
    pixels = open_png(tmp_path / "y.png")
    assert pixels.shape == (520, 800, 3)  # 8 x (0.35 x 12 + 1) inches at 100 dpi
    assert pixels.std() > 10
    # Red bars for, blue bars against, the class: at least one of them is drawn.
    red = np.all(pixels == (0xC0, 0x39, 0x2B), axis=-1).sum()
    blue = np.all(pixels == (0x2E, 0x86, 0xC1), axis=-1).sum()
    assert red + blue > 500

    attributions = np.array(numbers["attributions"])
    assert attributions.shape == (1, 30)
    assert np.isfinite(attributions).all() and np.abs(attributions).max() > 0
    assert len(numbers["completeness_error"]) == 1
    assert numbers["model_evaluations"] > 0

    # The same row as CSV and as .npy: the same explanation (integrated gradients has no noise).
    for other in ("breast_cancer.csv", "breast_cancer.npy"):
        again = explain_cancer(capsys, server.address, samples.folder / other, tmp_path)
        np.testing.assert_allclose(
            np.array(again["attributions"])[0], attributions[0], rtol=1e-4, atol=1e-6
        )


def test_explain_passes_params_to_the_method(
    server: ServerThread, samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = samples.folder / "breast_cancer.json"
    few = explain_cancer(capsys, server.address, source, tmp_path, "--params", '{"n_steps": 8}')
    many = explain_cancer(capsys, server.address, source, tmp_path, "--params", '{"n_steps": 128}')
    assert few["model_evaluations"] < many["model_evaluations"]


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


BAD = [
    # id, arguments after --server (@name: a sample file), exit code, what the message names
    ("unknown model", ["--model", "nope", "--input", "@digit_3.png"], 2, ["model", "'nope'"]),
    (
        "unknown method",
        ["--model", "digits", "--input", "@digit_3.png", "--method", "magic"],
        1,
        ["NOT_FOUND", "method"],
    ),
    (
        "method the model does not offer",
        ["--model", "breast_cancer", "--input", "@breast_cancer.json", "--method", "grad_cam"],
        1,
        ["NOT_FOUND", "method"],
    ),
    (
        "bad parameter value",
        ["--model", "digits", "--input", "@digit_3.png", "--params", '{"n_steps": -4}'],
        1,
        ["INVALID_ARGUMENT", "params.n_steps"],
    ),
    (
        "parameters that are not JSON",
        ["--model", "digits", "--input", "@digit_3.png", "--params", "{n_steps: 4}"],
        2,
        ["error: "],
    ),
    (
        "target out of range",
        ["--model", "digits", "--input", "@digit_3.png", "--target", "10"],
        1,
        ["INVALID_ARGUMENT", "targets[0]"],
    ),
    (
        "tabular row with an unknown feature",
        ["--model", "breast_cancer", "--input", "@unknown_feature.json"],
        2,
        ["unknown features", "'shoe size'"],
    ),
    (
        "missing input file",
        ["--model", "digits", "--input", "@no_such_file.png"],
        2,
        ["no_such_file.png"],
    ),
    (
        "wrong input shape",
        ["--model", "digits", "--input", "@flat_digits.npy"],
        1,
        ["INVALID_ARGUMENT", "inputs.shape"],
    ),
]


@pytest.mark.parametrize(
    ("arguments", "code", "named"), [case[1:] for case in BAD], ids=[case[0] for case in BAD]
)
def test_bad_input_exits_non_zero_naming_the_problem(
    server: ServerThread,
    samples: Samples,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    code: int,
    named: list[str],
) -> None:
    names = json.loads((samples.folder / "breast_cancer.json").read_text())
    names["shoe size"] = 44.0
    (tmp_path / "unknown_feature.json").write_text(json.dumps(names))
    np.save(tmp_path / "flat_digits.npy", samples.digit_arrays[:2].reshape(2, 64))
    files = {p.name: p for p in [*samples.folder.iterdir(), *tmp_path.iterdir()]}
    argv = [files.get(a[1:], tmp_path / a[1:]) if a.startswith("@") else a for a in arguments]
    if "--method" not in arguments:
        argv += ["--method", "integrated_gradients"]
    exit_code, out, err = cli(
        capsys, "explain", "--server", server.address, *argv, "--out", tmp_path / "bad.png"
    )
    assert exit_code == code, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in named:
        assert word in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "bad.png").exists()


def test_unreachable_server_is_a_clean_error(
    samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        capsys,
        "predict",
        "--server",
        f"127.0.0.1:{unused_port()}",
        "--model",
        "digits",
        "--input",
        samples.digit_pngs[3],
    )
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: ")


def run_script(*argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SIDELIGHT), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.slow
def test_script_explains_a_tabular_row(
    server: ServerThread, samples: Samples, tmp_path: Path
) -> None:
    out_png = tmp_path / "y.png"
    done = run_script(
        "explain",
        "--server",
        server.address,
        "--model",
        "breast_cancer",
        "--method",
        "integrated_gradients",
        "--input",
        samples.folder / "breast_cancer.csv",
        "--out",
        out_png,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out_png}" in done.stdout
    assert len(re.findall(r"^  instance \d: integrated_gradients", done.stdout, re.M)) == 3
    pixels = open_png(out_png)
    assert pixels.shape == (1360, 800, 3)  # three charts: 8 x (3 x 0.35 x 12 + 1) inches
    assert pixels.std() > 10


@pytest.mark.slow
def test_script_unknown_model_is_a_message_not_a_traceback(
    server: ServerThread, samples: Samples, tmp_path: Path
) -> None:
    done = run_script(
        "explain",
        "--server",
        server.address,
        "--model",
        "nope",
        "--method",
        "saliency",
        "--input",
        samples.digit_pngs[3],
        "--out",
        tmp_path / "never.png",
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "error: the server has no model 'nope'" in done.stderr
    assert not (tmp_path / "never.png").exists()


def test_explain_with_an_asynchronous_method_runs_a_job(
    server: ServerThread, samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kernel_shap is a job: the CLI submits it, prints its progress until it ends, then
    draws the result like any explanation; `jobs get` reads it again by id."""
    rows = tmp_path / "rows.npy"
    np.save(rows, samples.cancer_rows[:2])
    out_png, out_json = tmp_path / "shap.png", tmp_path / "shap.json"
    code, out, err = cli(
        capsys,
        "explain",
        "--server",
        server.address,
        "--model",
        "breast_cancer",
        "--method",
        "kernel_shap",
        "--params",
        '{"n_samples": 128, "seed": 3}',
        "--request-id",
        "cli-job-1",
        "--input",
        rows,
        "--out",
        out_png,
        "--json",
        out_json,
    )
    assert code == 0, err
    job_ids = set(re.findall(r"^job ([0-9a-f]{32}): ", out, re.MULTILINE))
    assert len(job_ids) == 1, out
    assert re.search(r"^job [0-9a-f]{32}: SUCCEEDED, 100% \(\d+ model evaluations\)$", out, re.M)
    assert "wrote " + str(out_png) in out
    assert distinct_colours(open_png(out_png)) > 10
    numbers = json.loads(out_json.read_text())
    assert np.array(numbers["attributions"]).shape == (2, 30)
    assert numbers["seed"] == 3

    code, again, err = cli(capsys, "jobs", "get", job_ids.pop(), "--server", server.address)
    assert code == 0, err
    assert "SUCCEEDED" in again
    code, _, err = cli(capsys, "jobs", "get", "0123abcd", "--server", server.address)
    assert code == 1 and "NOT_FOUND" in err


def test_sanity_prints_a_table_writes_json_and_png_and_fails_what_the_config_forbids(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sidelight sanity` on digits: saliency and Grad-CAM pass the default threshold; with
    the threshold the config sets at 0.3, Guided Backprop (the paper's insensitive method)
    fails it and the command exits 1."""
    argv = ["sanity", "--model-repository", model_repository, "--model", "digits", "--samples", 16]
    code, out, err = cli(
        capsys,
        *argv,
        "--methods",
        "saliency,grad_cam",
        "--data-randomization",
        "--out",
        tmp_path / "ok",
    )
    assert code == 0, err
    assert re.search(r"^saliency\s+features_0_conv2d\s+-?\d\.\d{3}", out, re.M), out
    # The network retrained on permuted labels explains differently (Adebayo et al. 2018).
    permuted = re.search(r"^saliency\s+permuted labels\s+(-?\d\.\d{3})\s+(-?\d\.\d{3})", out, re.M)
    assert permuted is not None and float(permuted.group(2)) < 0.5, out
    report = json.loads((tmp_path / "ok" / "sanity-digits-cascading.json").read_text())
    assert set(report["methods"]) == {"saliency", "grad_cam"} and report["failed"] == []
    assert distinct_colours(open_png(tmp_path / "ok" / "sanity-digits-cascading.png")) > 10

    strict = tmp_path / "repository"
    shutil.copytree(model_repository / "digits", strict / "digits")
    config = yaml.safe_load((strict / "digits" / "config.yaml").read_text())
    config["sanity"] = {"max_spearman_abs": 0.3}
    (strict / "digits" / "config.yaml").write_text(yaml.safe_dump(config))
    argv[2] = strict
    code, out, err = cli(
        capsys, *argv, "--methods", "saliency,guided_backprop", "--out", tmp_path / "no"
    )
    assert code == 1
    assert "guided_backprop" in err and "saliency" not in err
