"""The human-readable audit report: its wording from hand-built records, escaping of record
text, and the page as a person sees it, opened in headless Chromium (Debian's chromium and
chromedriver, driven by Selenium): the decision, the reasons, the method's caveat and charts
that decode."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from sidelight.audit.record import AuditRecord, FeatureWeight, RecordKind
from sidelight.audit.report import METHOD_NOTES, render_report, write_report
from sidelight.errors import InvalidArgument
from sidelight.methods.catalog import METHODS
from sklearn.datasets import load_breast_cancer, load_digits

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
VERSIONS = {"sidelight": "0.1.0", "torch": "2.13.0", "captum": "0.9.0", "numpy": "2.4.6"}


def top_k(values: np.ndarray, names: list[str], k: int) -> tuple[FeatureWeight, ...]:
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return tuple(FeatureWeight(names[j], float(values[j])) for j in order)


def tabular_record() -> AuditRecord:
    """kernel_shap on one breast_cancer row, explained for its predicted class, benign."""
    rng = np.random.default_rng(7)
    names = [str(n) for n in load_breast_cancer().feature_names]
    phi = (rng.normal(size=30) * rng.exponential(0.05, size=30)).astype(np.float32)
    phi[names.index("worst radius")] = 0.31
    phi[names.index("worst concave points")] = -0.12
    return AuditRecord(
        record_id="3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b",
        kind=RecordKind.EXPLANATION,
        time=1795000000.0,
        caller="clinic-frontend",
        request_id="req-20261123-0042",
        subject_id="patient-8812",
        model="breast_cancer",
        model_version="1",
        model_digest="9b1d" * 16,
        method="kernel_shap",
        params={"n_samples": 512, "reference": "background", "seed": 11},
        seed=11,
        baseline_digest="4c7e" * 16,
        input_digest="a0b1" * 16,
        input_dtype="float32",
        input_shape=(1, 30),
        labels=("malignant", "benign"),
        feature_names=tuple(names),
        outputs=((0.03, 0.97),),
        targets=(1,),
        summary=(top_k(phi, names, 8),),
        attributions_shape=(1, 30),
        attributions=phi.astype("<f4").tobytes(),
        quality={
            "completeness_error": [1.2e-7],
            "relative_completeness_error": [2.6e-7],
            "model_evaluations": 513,
            "seed": 11,
            "faithfulness": {
                "reference": "baseline",
                "steps": 16,
                "deletion_auc": [0.21],
                "insertion_auc": [0.93],
                "random_deletion_auc": [0.48],
                "random_insertion_auc": [0.71],
                "infidelity": [3.2e-4],
            },
        },
        versions=VERSIONS,
    )


def image_record() -> tuple[AuditRecord, np.ndarray]:
    """A grad_cam-like map (non-negative, smooth) on one 8x8 digit, and the digit itself."""
    digits = load_digits()
    index = int(np.flatnonzero(digits.target == 3)[0])
    image = (digits.images[index] / 16.0).astype(np.float32)[None, None]  # 1 x 1 x 8 x 8
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:8, 0:8]
    blob = np.exp(-((yy - 1.5) ** 2 + (xx - 6.0) ** 2) / 4.0)  # top right
    heat = np.clip(blob + 0.05 * rng.normal(size=(8, 8)), 0, None).astype(np.float32)
    logits = rng.normal(size=10)
    logits[3] = 6.0
    probabilities = np.exp(logits) / np.exp(logits).sum()
    record = AuditRecord(
        record_id="7d0c5e2a1b3f4a8e9c6d5b4a3f2e1d0c",
        kind=RecordKind.EXPLANATION,
        time=1795000100.0,
        caller="mail-sorter",
        request_id="req-digits-17",
        model="digits",
        model_version="2",
        model_digest="e3b0" * 16,
        method="grad_cam",
        params={"counterfactual": False},
        input_digest="c0ffee00" * 8,
        input_dtype="float32",
        input_shape=(1, 1, 8, 8),
        labels=tuple(str(d) for d in range(10)),
        outputs=(tuple(float(p) for p in probabilities),),
        targets=(3,),
        summary=(
            (
                FeatureWeight("rows 1–3, columns 4–6", float(heat[1:4, 4:7].sum())),
                FeatureWeight("rows 4–6, columns 4–6", float(heat[4:7, 4:7].sum())),
            ),
        ),
        attributions_shape=(1, 1, 8, 8),
        attributions=heat.astype("<f4").tobytes(),
        quality={
            "model_evaluations": 1,
            "faithfulness": {
                "reference": "blur",
                "steps": 16,
                "deletion_auc": [0.63],
                "insertion_auc": [0.42],
                "random_deletion_auc": [0.56],
                "random_insertion_auc": [0.57],
            },
        },
        versions=VERSIONS,
    )
    return record, image


HOSTILE = "<script>alert('x')</script>"


def hostile_record() -> AuditRecord:
    """Every string a caller or a model file can influence, set to markup (and to mathtext,
    which matplotlib would otherwise parse in the chart's labels)."""
    record = tabular_record()
    names = [f"{HOSTILE} {j}" if j % 2 else rf"$\notacommand{{{j}}}$" for j in range(30)]
    values = np.frombuffer(record.attributions, dtype="<f4").copy()
    return replace(
        record,
        caller=HOSTILE,
        request_id=HOSTILE,
        subject_id=HOSTILE,
        model=HOSTILE,
        model_version=HOSTILE,
        model_digest=HOSTILE,
        method=HOSTILE,
        params={HOSTILE: HOSTILE},
        record_id=HOSTILE,
        input_digest=HOSTILE,
        labels=(HOSTILE, f"{HOSTILE}$x$"),
        feature_names=tuple(names),
        summary=(top_k(values, names, 8),),
        quality={**record.quality, "stopped_by": HOSTILE, "faithfulness": {"reference": HOSTILE}},
        versions={HOSTILE: HOSTILE},
    )


def embedded_pngs(page: str) -> list[Image.Image]:
    found = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


# --- wording -----------------------------------------------------------------------------------


def test_tabular_report_says_the_decision_the_reasons_and_the_quality() -> None:
    page = render_report(tabular_record())
    assert (
        "The model <code>breast_cancer</code> (version 1) classified this case as "
        "<strong>benign</strong> with a probability of 97%." in page
    )
    assert "'worst radius' pushed the decision towards <strong>benign</strong> (weight +0.31)" in (
        page
    )
    assert "'worst concave points' pushed the decision away from <strong>benign</strong>" in page
    assert "(weight −0.12)" in page
    assert "faster than removing random ones (AUC 0.21 vs 0.48" in page
    assert "the explanation is faithful by this test" in page
    assert "to within less than 0.01% of that change (as the method promises)" in page
    assert "Infidelity 0.00032" in page
    assert "local_fidelity" not in page and "R²" not in page.split("What this method")[0]
    assert "patient-8812" in page and "req-20261123-0042" in page
    assert "<code>n_samples</code> = <code>512</code>" in page
    assert "9b1d" * 16 in page and "a0b1" * 16 in page and "captum" in page
    assert "f(x) − E[f]" in page  # the method's caveat
    [chart] = embedded_pngs(page)
    assert chart.format == "PNG" and chart.width > 400 and chart.height > 200


def test_image_report_shows_the_regions_and_an_unfaithful_map_honestly() -> None:
    record, image = image_record()
    page = render_report(record, inputs=image)
    assert "classified this case as <strong>3</strong> with a probability of" in page
    assert "'rows 1–3, columns 4–6' pushed the decision towards <strong>3</strong>" in page
    assert "Most of the evidence for <strong>3</strong> lies in the top right part" in page
    assert "Most of the evidence against" not in page  # a non-negative map has none
    assert "does not lower the model's confidence faster than removing random ones" in page
    assert "(AUC 0.63 vs 0.56, lower is better)" in page
    assert "the black line traces the input" in page
    assert "coarse" in page  # Grad-CAM's caveat
    [heatmap] = embedded_pngs(page)
    assert heatmap.width > heatmap.height  # input and overlay side by side
    alone = embedded_pngs(render_report(record))[0]
    assert alone.width < heatmap.width


def test_every_catalog_method_has_its_own_caveat_and_unknown_ones_a_generic_one() -> None:
    assert set(METHOD_NOTES) == set(METHODS)
    assert len({note.text for note in METHOD_NOTES.values()}) == len(METHOD_NOTES)
    assert "Adebayo" in METHOD_NOTES["guided_backprop"].text
    assert "R²" in METHOD_NOTES["lime"].text and "seed" in METHOD_NOTES["lime"].text
    page = render_report(replace(tabular_record(), method="new_method"))
    assert "This report has no description of this method." in page


def test_logits_a_different_target_and_a_directionless_map_are_worded_as_such() -> None:
    record = replace(
        tabular_record(),
        outputs=((2.5, -1.0),),
        targets=(1,),
        method="saliency",
        params={},
        quality={},
    )
    page = render_report(record)
    assert "classified this case as <strong>malignant</strong> with a score of 2.5." in page
    assert "not probabilities" in page
    assert "The explanation below is about the class <strong>benign</strong>" in page
    assert "The decision was sensitive to 'worst radius' (weight 0.31)" in page
    assert "How far this explanation can be trusted" not in page  # no figures, no section


def test_one_instance_with_its_inputs_and_bad_arguments() -> None:
    record = tabular_record()
    rows = load_breast_cancer().data[:2].astype(np.float32)
    two = replace(
        record,
        input_shape=(2, 30),
        outputs=((0.03, 0.97), (0.9, 0.1)),
        targets=(1, 0),
        summary=(record.summary[0], record.summary[0]),
        attributions_shape=(2, 30),
        attributions=record.attributions * 2,
        quality={},
    )
    everything = render_report(two, inputs=rows)
    assert "Case 1 of 2" in everything and "Case 2 of 2" in everything
    second = render_report(two, instance=1, inputs=rows)
    assert "Case 2 of 2" in second and "Case 1 of 2" not in second
    assert "as <strong>malignant</strong> with a probability of 90%" in second
    assert f"'worst radius' (value {rows[1][20]:.4g}) pushed" in second
    assert "(value" in render_report(two, instance=0, inputs=rows[0])
    with pytest.raises(InvalidArgument, match="instance"):
        render_report(two, instance=2)
    with pytest.raises(InvalidArgument, match="inputs"):
        render_report(two, inputs=rows[:, :10])
    with pytest.raises(InvalidArgument, match="record"):
        render_report(replace(record, kind=RecordKind.ERASURE))


def test_a_prediction_record_without_reasons_from_the_map(tmp_path: Path) -> None:
    record = replace(tabular_record(), summary=())  # the reasons then come from the map
    page = write_report(record, tmp_path / "r.html", integrity="record 3; chain verified")
    text = page.read_text(encoding="utf-8")
    assert "'worst radius' pushed" in text and "record 3; chain verified" in text
    prediction = replace(
        record, kind=RecordKind.PREDICTION, method="", attributions=b"", attributions_shape=()
    )
    assert "the record holds the prediction only" in render_report(prediction)


def test_record_text_is_escaped_everywhere() -> None:
    page = render_report(hostile_record(), integrity=HOSTILE)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert len(embedded_pngs(page)) == 1  # the `$…$` names drew as text, not mathtext


# --- in a browser ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What a reader of the page sees."""

    text: str
    decision: str
    caveat: str
    images: list[tuple[int, int]]  # each image's decoded size, 0 x 0 when it did not decode
    scripts: int


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: WebDriver, path: Path) -> Seen:
    browser.get(path.as_uri())
    found = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const images = Array.from(document.images);
        Promise.all(images.map((i) => i.decode().catch(() => null))).then(() => done({
          text: document.body.innerText,
          decision: document.querySelector(".decision").innerText,
          caveat: (document.querySelector("p.caveat") || {innerText: ""}).innerText,
          images: images.map((i) => [i.naturalWidth, i.naturalHeight]),
          scripts: document.scripts.length,
        }));
        """
    )
    return Seen(
        text=found["text"],
        decision=found["decision"],
        caveat=found["caveat"],
        images=[(int(w), int(h)) for w, h in found["images"]],
        scripts=int(found["scripts"]),
    )


def test_the_tabular_report_in_a_browser(browser: WebDriver, tmp_path: Path) -> None:
    seen = open_page(browser, write_report(tabular_record(), tmp_path / "tabular.html"))
    assert seen.decision == (
        "The model breast_cancer (version 1) classified this case as benign with a "
        "probability of 97%."
    )
    assert "'worst radius' pushed the decision towards benign (weight +0.31)" in seen.text
    assert "'worst concave points' pushed the decision away from benign (weight −0.12)" in (
        seen.text
    )
    assert "What this method can and cannot tell you" in seen.text
    assert "f(x) − E[f]" in seen.caveat and "seed" in seen.caveat
    [(width, height)] = seen.images
    assert width > 400 and height > 200


def test_the_image_report_in_a_browser(browser: WebDriver, tmp_path: Path) -> None:
    record, image = image_record()
    path = write_report(record, tmp_path / "image.html", inputs=image, integrity="record 42")
    seen = open_page(browser, path)
    assert seen.decision.startswith("The model digits (version 2) classified this case as 3")
    assert "'rows 1–3, columns 4–6' pushed the decision towards 3" in seen.text
    assert "coarse" in seen.caveat
    assert "record 42" in seen.text
    [(width, height)] = seen.images
    assert width > 300 and height > 150


def test_hostile_text_stays_text_in_a_browser(browser: WebDriver, tmp_path: Path) -> None:
    path = write_report(hostile_record(), tmp_path / "hostile.html", integrity=HOSTILE)
    seen = open_page(browser, path)
    assert seen.scripts == 0
    assert HOSTILE in seen.text and HOSTILE in seen.decision
    assert seen.images and all(w > 0 and h > 0 for w, h in seen.images)
