"""An audit record made readable: one self-contained HTML page for a person who is not an ML
engineer (the person a decision is about, a case worker, a regulator).

    html = render_report(record)                    # every instance of the record
    write_report(record, "case.html", instance=0, inputs=rows, integrity="chain verified")

For each instance the page says, in plain words: the decision and its probability; the main
reasons with their weights (a bar chart and sentences for tabular models; for images a heatmap
and the regions in words, beside the input and over its outline when the caller has it, since
the raw input is not kept in the log); how far the explanation can be trusted (only the quality
figures the record holds). Then, once: which model file, method, parameters and seed, when and
for which request and subject; what the method can and cannot tell (`METHOD_NOTES`, one honest
paragraph per method of the catalog); and a technical annex (integrity line, record id, input
digest, library versions).

The page needs nothing from outside: CSS in the page, charts as PNG `data:` URIs drawn by
matplotlib's Agg canvas (object API, no pyplot state), no JavaScript. Everything that comes
from the record is untrusted text: it is escaped for HTML, and `$` is escaped for matplotlib,
whose mathtext would otherwise parse it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sidelight.audit.record import AuditRecord, FeatureWeight, RecordKind
from sidelight.errors import InvalidArgument

Floats = npt.NDArray[np.float64]

TOWARDS = "#c0392b"  # red: pushed towards the explained class (also the heatmaps' positive end)
AWAY = "#2471a3"  # blue: pushed away from it
UNSIGNED = "#7d3c98"  # a magnitude without direction (|gradient|, a variance)
TOP_K = 10  # reasons shown when the record has no summary and they come from the map


@dataclass(frozen=True)
class MethodNote:
    title: str  # the method's name as people write it
    text: str  # what it can and cannot tell, for a reader who is not an ML engineer


_SAMPLED = (
    " It is an estimate computed from random samples: the recorded seed reproduces "
    "this exact result, and another seed would give slightly different weights."
)
_SHAPLEY = (
    "Shapley values share out, fairly between the features, the difference between the "
    "model's probability for this case, f(x), and its average probability over a recorded set "
    "of reference cases (the background), E[f]: the values add up to f(x) − E[f]. Each value "
    "is therefore a contribution relative to that background, whose digest this report gives; "
    "another background gives other values. Features left out of a combination take the "
    "reference cases' values independently of the others, so with correlated features the "
    "model is asked about combinations that never occur: the values describe the model, not "
    "the world. For images the features are blocks of the picture, not single pixels."
)

METHOD_NOTES: Mapping[str, MethodNote] = {
    "saliency": MethodNote(
        "Saliency (gradient)",
        "Saliency shows how strongly the model's score for the class would change if each "
        "input value were nudged by a tiny amount. It measures local sensitivity, not cause: "
        "a value can be sensitive without having driven this decision, and in its usual form "
        "(absolute values) it does not say in which direction a value pushed. Plain gradients "
        "are noisy, and on tabular data they are often no better than a random ranking at "
        "picking out what the model relies on.",
    ),
    "input_x_gradient": MethodNote(
        "Input × Gradient",
        "Input × Gradient multiplies each input value by the model's sensitivity to it: a "
        "quick, local approximation of each value's contribution. It is exact only for a "
        "linear model; for others it describes the model's behaviour very close to this case, "
        "not causes. A value of zero always gets zero weight, whatever the model does with it.",
    ),
    "smoothgrad": MethodNote(
        "SmoothGrad",
        "SmoothGrad averages a gradient explanation over many slightly noisy copies of the "
        "input, which makes the picture less speckled. It still measures local sensitivity, "
        "not cause." + _SAMPLED,
    ),
    "vargrad": MethodNote(
        "VarGrad",
        "VarGrad measures how much a gradient explanation varies over noisy copies of the "
        "input: it shows where the model's sensitivity is unstable. It has no direction: it "
        "cannot say whether a value pushed towards or away from the decision." + _SAMPLED,
    ),
    "integrated_gradients": MethodNote(
        "Integrated Gradients",
        "Integrated Gradients adds up the model's sensitivity along a straight path from a "
        "reference input (the baseline) to this case. The weights add up to the difference "
        "between the model's score for this case and for the baseline (the completeness "
        "figure, when recorded, says how closely), so they are shares of that difference, and they "
        "depend on the baseline chosen: another reference can give other reasons. Features "
        "that move together can share or swap credit.",
    ),
    "guided_backprop": MethodNote(
        "Guided Backpropagation",
        "Guided Backpropagation draws sharp, detailed pictures, but it is known to barely "
        "depend on the model's learned weights (Adebayo et al. 2018, “Sanity checks for "
        "saliency maps”): a model with random weights gives much the same picture. It behaves "
        "largely like edge detection on the input. Treat it as an illustration, not as "
        "evidence of why the model decided.",
    ),
    "deeplift": MethodNote(
        "DeepLIFT",
        "DeepLIFT compares each internal signal of the model with its value for a reference "
        "input (the baseline) and shares out the difference in the model's score between this "
        "case and the baseline. The weights add up to that difference, and they depend on the "
        "baseline chosen. The rules that share it out are a convention, not the only fair "
        "way: other methods can divide the same difference differently.",
    ),
    "lrp": MethodNote(
        "Layer-wise Relevance Propagation",
        "Layer-wise Relevance Propagation passes the model's score backwards through its "
        "layers and shares it out among the input values by fixed rules. The result depends "
        "on those rules, and part of the score is absorbed by the model's internal offsets "
        "and never reaches the inputs: the completeness figure, when recorded, shows how much.",
    ),
    "cam": MethodNote(
        "Class Activation Mapping (CAM)",
        "CAM shows which areas of the model's last internal image supported the class. It is "
        "coarse: that image is smaller than the input and is enlarged to fit it, so the map "
        "says roughly where, not exactly which pixels.",
    ),
    "grad_cam": MethodNote(
        "Grad-CAM",
        "Grad-CAM weights the model's last internal images by how sensitive the class score "
        "is to them. It is coarse (it says roughly where, not exactly which pixels), and it "
        "shows only what supported the class: evidence against it is cut off.",
    ),
    "grad_cam_plus_plus": MethodNote(
        "Grad-CAM++",
        "Grad-CAM++ is a variant of Grad-CAM that weights the model's last internal images so "
        "that several separate areas of support can show. It has the same limits: coarse "
        "resolution, and only evidence for the class is shown.",
    ),
    "guided_grad_cam": MethodNote(
        "Guided Grad-CAM",
        "Guided Grad-CAM multiplies the coarse Grad-CAM map by a Guided Backpropagation "
        "picture to make it look sharp. The sharp detail comes from Guided Backpropagation, "
        "which is known to barely depend on the model's weights (Adebayo et al. 2018): trust "
        "the rough location at most, not the fine detail.",
    ),
    "occlusion": MethodNote(
        "Occlusion",
        "Occlusion hides one part of the input at a time (filling it with a reference value) "
        "and records how much the model's probability for the class changes. It observes the "
        "model directly, but the result depends on the size of the hidden part and on what "
        "fills it: a part can matter when hidden even if the model ignores it in context, and "
        "effects that only appear when several parts change together are missed.",
    ),
    "rise": MethodNote(
        "RISE",
        "RISE hides many random combinations of regions and records the model's probability "
        "for each; a region's weight is the average probability when it was visible. It "
        "observes the model directly, but it depends on the size of the masks and on what "
        "fills the hidden parts." + _SAMPLED,
    ),
    "kernel_shap": MethodNote(
        "Kernel SHAP",
        _SHAPLEY
        + " Kernel SHAP estimates these values from sampled combinations of features; when "
        "all combinations fit in the budget it computes them exactly." + _SAMPLED,
    ),
    "exact_shapley": MethodNote(
        "Exact Shapley values",
        _SHAPLEY + " Here they are computed exactly, over every combination of features.",
    ),
    "lime": MethodNote(
        "LIME",
        "LIME fits a simple linear model that imitates the model on random variations around "
        "this case, and reports that simple model's weights. The weights depend on how the "
        "variations are drawn and weighted. How well the simple model imitates the real one "
        "is its fit (R², where 1 is perfect), given with each case when recorded: with a low fit, "
        "do not rely on the weights. For tabular data the weights are per typical variation "
        "of each feature, not shares of the decision." + _SAMPLED,
    ),
}


def generic_note(method: str) -> MethodNote:
    return MethodNote(
        method,
        "This report has no description of this method. Whatever the method, an explanation "
        "describes how the model behaves around this case; it is not a statement about causes "
        "in the world, and different methods can give different reasons for the same decision.",
    )


def render_report(
    record: AuditRecord,
    *,
    instance: int | None = None,
    inputs: npt.ArrayLike | None = None,
    integrity: str | None = None,
) -> str:
    """The whole page. `instance` selects one instance of the record's batch (default: all);
    `inputs` are the raw inputs when the caller has them (the batch, or the chosen instance):
    images are then shown under their heatmap and tabular values beside their features;
    `integrity` is the log's verdict on the record, shown as given."""
    if record.kind not in (RecordKind.EXPLANATION, RecordKind.PREDICTION):
        raise InvalidArgument("record", f"a {record.kind.value} record holds no decision")
    count = _instance_count(record)
    if instance is not None and not 0 <= instance < count:
        raise InvalidArgument("instance", f"{instance} is not in 0..{count - 1}")
    chosen = range(count) if instance is None else [instance]
    given = _inputs_by_instance(record, inputs, list(chosen))
    maps = _attribution_maps(record)
    if maps is not None and len(maps) != count:
        maps = None  # a map per instance or none: never one instance's map for another
    sections = [
        _instance_section(record, i, maps, given.get(i), numbered=count > 1) for i in chosen
    ]
    return _page(record, sections, integrity)


def write_report(record: AuditRecord, path: str | Path, **kwargs: Any) -> Path:
    """`render_report(record, **kwargs)` written to `path` (UTF-8)."""
    target = Path(path)
    target.write_text(render_report(record, **kwargs), encoding="utf-8")
    return target


# --- the record's data, per instance -----------------------------------------------------------


def _instance_count(record: AuditRecord) -> int:
    if record.input_shape:
        return record.input_shape[0]
    return max(len(record.outputs), len(record.targets), len(record.summary), 1)


def _is_image(record: AuditRecord) -> bool:
    return len(record.input_shape) >= 3 or len(record.attributions_shape) >= 3


def _attribution_maps(record: AuditRecord) -> Floats | None:
    """N x ... float64, or None when the record holds none (or bytes that do not fit)."""
    shape = record.attributions_shape
    if not record.attributions or not shape or math.prod(shape) * 4 != len(record.attributions):
        return None
    values = np.frombuffer(record.attributions, dtype="<f4").reshape(shape)
    return np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _inputs_by_instance(
    record: AuditRecord, inputs: npt.ArrayLike | None, chosen: list[int]
) -> dict[int, Floats]:
    if inputs is None:
        return {}
    array = np.asarray(inputs, dtype=np.float64)
    shape = record.input_shape
    if shape and array.shape == shape:
        return {i: array[i] for i in chosen}
    if shape and array.shape == shape[1:] and len(chosen) == 1:
        return {chosen[0]: array}
    raise InvalidArgument(
        "inputs",
        f"shape {array.shape} is neither the record's input shape {shape} "
        f"nor one chosen instance's",
    )


def _class_name(record: AuditRecord, index: int) -> str:
    if 0 <= index < len(record.labels) and record.labels[index]:
        return record.labels[index]
    return f"class {index}"


def _at(values: Sequence[Any] | None, i: int) -> float | None:
    """values[i] as a finite float, None when absent (quality lists may be short or hold null)."""
    if not isinstance(values, Sequence) or i >= len(values):
        return None
    value = values[i]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _is_probabilities(row: Sequence[float]) -> bool:
    return bool(row) and all(0.0 <= p <= 1.0 for p in row) and abs(sum(row) - 1.0) < 1e-3


def _directionless(record: AuditRecord) -> bool:
    """Maps that hold a magnitude, not a signed push: |gradient| and a variance."""
    if record.method == "vargrad":
        return True
    if record.method == "saliency":
        return record.params.get("abs", True) is not False
    if record.method == "smoothgrad":
        return bool(record.params.get("base", "saliency") == "saliency")
    return False


def _reasons(record: AuditRecord, i: int, maps: Floats | None) -> tuple[FeatureWeight, ...]:
    """The recorded top-k; from the map when the record has no summary (tabular only: an
    image's elements one by one are not reasons a person can read)."""
    if i < len(record.summary) and record.summary[i]:
        return record.summary[i]
    if maps is None or _is_image(record):
        return ()
    row = maps[i].reshape(-1)
    names = record.feature_names
    order = np.argsort(-np.abs(row), kind="stable")[:TOP_K]
    return tuple(
        FeatureWeight(names[j] if j < len(names) else f"feature {j}", float(row[j])) for j in order
    )


# --- wording -----------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _percent(p: float) -> str:
    pct = 100.0 * p
    if 99.5 <= pct < 100.0:
        return "over 99%"
    if 0.0 < pct < 0.5:
        return "under 1%"
    return f"{pct:.0f}%"


def _weight(value: float, *, signed: bool = True) -> str:
    sign = "+" if signed else ""
    text = f"{value:{sign}.2f}" if 0.01 <= abs(value) < 1000 else f"{value:{sign}.2g}"
    return text.replace("-", "−")


def _share(fraction: float) -> str:
    pct = 100.0 * fraction
    if pct < 0.01:
        return "less than 0.01%"
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.2g}%"


def _number(value: float) -> str:
    return f"{value:.4g}".replace("-", "−")


def _when(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return f"{moment.day} {moment:%B %Y at %H:%M:%S} UTC"


def _decision(record: AuditRecord, i: int) -> str:
    model = f"The model <code>{_e(record.model)}</code>"
    if record.model_version:
        model += f" (version {_e(record.model_version)})"
    row = record.outputs[i] if i < len(record.outputs) else ()
    target = record.targets[i] if i < len(record.targets) else None
    if not row:
        if target is None:
            return f"<p class='decision'>{model} made no recorded decision for this case.</p>"
        name = _class_name(record, target)
        return (
            f"<p class='decision'>{model} classified this case as <strong>{_e(name)}</strong>.</p>"
        )
    predicted = int(np.argmax(row))
    probabilities = _is_probabilities(row)

    def score(index: int) -> str:
        if probabilities:
            return f"a probability of {_percent(row[index])}"
        return f"a score of {_number(row[index])}"

    parts = [
        f"<p class='decision'>{model} classified this case as "
        f"<strong>{_e(_class_name(record, predicted))}</strong> with {score(predicted)}.</p>"
    ]
    others = sorted((j for j in range(len(row)) if j != predicted), key=lambda j: -row[j])
    if others:
        runner = others[0]
        parts.append(
            f"<p>The next most likely class was <strong>{_e(_class_name(record, runner))}"
            f"</strong> ({score(runner).removeprefix('a ')}).</p>"
        )
    if probabilities:
        parts.append(
            "<p class='aside'>A probability here is the model's own confidence, not a measured "
            "chance of being right.</p>"
        )
    else:
        parts.append(
            "<p class='aside'>These scores are the model's raw outputs, not probabilities: "
            "only their order means something.</p>"
        )
    if target is not None and target != predicted:
        parts.append(
            f"<p class='note'>The explanation below is about the class "
            f"<strong>{_e(_class_name(record, target))}</strong> ({score(target)}), which is "
            f"not the class chosen: it shows what pushed towards or away from that class.</p>"
        )
    return "".join(parts)


def _reason_sentence(
    weight: FeatureWeight, towards: str, directionless: bool, value: float | None
) -> str:
    name = f"'{_e(weight.name)}'"
    if value is not None:
        name += f" (value {_number(value)})"
    if directionless:
        size = _weight(weight.value, signed=False)
        return f"<li>The decision was sensitive to {name} (weight {size})</li>"
    if weight.value > 0:
        direction = "towards"
    elif weight.value < 0:
        direction = "away from"
    else:
        return f"<li>{name} did not move the decision (weight 0)</li>"
    return (
        f"<li class='{'towards' if weight.value > 0 else 'away'}'>{name} pushed the decision "
        f"{direction} <strong>{_e(towards)}</strong> (weight {_weight(weight.value)})</li>"
    )


def _reasons_section(record: AuditRecord, i: int, maps: Floats | None, given: Floats | None) -> str:
    if not record.method:
        return (
            "<p>No explanation was computed for this decision: the record holds the "
            "prediction only.</p>"
        )
    towards = _class_name(record, record.targets[i] if i < len(record.targets) else 0)
    directionless = _directionless(record)
    reasons = _reasons(record, i, maps)
    parts = ["<h3>The main reasons</h3>"]
    if _is_image(record):
        if maps is None:
            parts.append("<p>The record holds no map of the explanation.</p>")
        else:
            parts.append(_image_figure(maps[i], given, towards, directionless))
    elif reasons:
        parts.append(
            _figure(
                _bars_png(reasons, towards, directionless),
                f"Bar chart of the {len(reasons)} features with the largest weights",
                f"The {len(reasons)} features that weighed most, largest first.",
            )
        )
    else:
        parts.append("<p>The record holds no reasons for this case.</p>")
    if reasons:
        values = given.reshape(-1) if given is not None and not _is_image(record) else None
        parts.append(_reason_list(record, reasons, values, towards, directionless))
    return "".join(parts)


def _image_figure(heat: Floats, given: Floats | None, towards: str, directionless: bool) -> str:
    if directionless:
        caption = "Darker: the decision was more sensitive to that part"
    elif _signed(heat, directionless):
        caption = f"Red: pushed towards {_e(towards)}; blue: pushed away from it"
    else:
        caption = f"Darker red: stronger evidence for {_e(towards)}"
    if given is not None:
        caption += (
            " (over the input image)"
            if _is_photo(given)
            else " (the black line traces the input's bright strokes)"
        )
    figure = _figure(
        _heatmap_png(heat, given, towards, directionless),
        "Heatmap of the explanation",
        caption + ".",
    )
    return f"{figure}<p>{_regions_in_words(heat, towards, directionless)}</p>"


def _reason_list(
    record: AuditRecord,
    reasons: Sequence[FeatureWeight],
    values: Floats | None,
    towards: str,
    directionless: bool,
) -> str:
    """The reasons as sentences, with each feature's value when the caller gave the input."""
    index = {name: j for j, name in enumerate(record.feature_names)}

    def value_of(name: str) -> float | None:
        j = index.get(name)
        return None if values is None or j is None or j >= values.size else float(values[j])

    sentences = "".join(
        _reason_sentence(w, towards, directionless, value_of(w.name)) for w in reasons
    )
    what = "regions" if _is_image(record) else "reasons"
    return (
        f"<p>The main {what}, largest weight first:</p><ul class='reasons'>{sentences}</ul>"
        "<p class='aside'>A weight compares the factors of this one case: a larger weight "
        "mattered more. Its unit depends on the method (see below).</p>"
    )


_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "centre", "right")


def _region_name(row: int, column: int) -> str:
    if (row, column) == (1, 1):
        return "centre"
    if row == 1:
        return f"middle {_COLUMNS[column]}"
    return f"{_ROWS[row]} {_COLUMNS[column]}"


def _regions_in_words(heat: Floats, towards: str, directionless: bool) -> str:
    """Where the evidence lies, on a 3 x 3 grid of the image."""
    plane = _plane(heat)
    rows = np.array_split(np.arange(plane.shape[0]), 3)
    columns = np.array_split(np.arange(plane.shape[1]), 3)

    def mass(part: Floats) -> Floats:
        return np.array(
            [[part[np.ix_(r, c)].sum() for c in columns] for r in rows], dtype=np.float64
        )

    def where(grid: Floats, total: float) -> str:
        r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
        share = grid[r, c] / total
        return f"the {_region_name(int(r), int(c))} part of the image ({share:.0%} of it)"

    positive = mass(np.clip(plane, 0, None))
    negative = mass(np.clip(-plane, 0, None))
    if positive.sum() <= 0 and negative.sum() <= 0:
        return "The map is empty: no part of the image weighed on the decision."
    if directionless:
        return f"The decision was most sensitive to {where(positive, positive.sum())}."
    sentences = []
    if positive.sum() > 0:
        sentences.append(
            f"Most of the evidence for <strong>{_e(towards)}</strong> lies in "
            f"{where(positive, positive.sum())}."
        )
    if negative.sum() > 0:
        sentences.append(
            f"Most of the evidence against it lies in {where(negative, negative.sum())}."
        )
    return " ".join(sentences)


def _quality_section(record: AuditRecord, i: int) -> str:
    quality = record.quality
    image = _is_image(record)
    sentences: list[str] = []
    relative = _at(quality.get("relative_completeness_error"), i)
    absolute = _at(quality.get("completeness_error"), i)
    reference = (
        "the background"
        if record.method in ("kernel_shap", "exact_shapley")
        else ("the reference input")
    )
    if relative is not None:
        if relative < 0.01:
            verdict = "as the method promises"
        elif relative < 0.1:
            verdict = "approximately"
        else:
            verdict = "far from it: read the weights as a ranking rather than as amounts"
        sentences.append(
            f"The weights should add up to the change in the model's score between "
            f"{reference} and this case; they do so to within {_share(relative)} of that change "
            f"({verdict}). A small gap is necessary for a faithful explanation, not sufficient."
        )
    elif absolute is not None:
        sentences.append(
            f"The weights should add up to the change in the model's score between "
            f"{reference} and this case; they do so to within {_number(absolute)} (in the "
            f"units of the model's score)."
        )
    fit = _at(quality.get("local_fidelity"), i)
    if fit is not None:
        if fit >= 0.8:
            verdict = "it imitates the model well there, so its weights are a fair summary"
        elif fit >= 0.5:
            verdict = "it imitates the model only partly there: treat its weights with caution"
        else:
            verdict = "it imitates the model poorly there: do not rely on its weights"
        sentences.append(
            f"The simple model fitted to imitate the model around this case has a fit of "
            f"R² = {fit:.2f} (1 means a perfect imitation, 0 none): {verdict}."
        )
    faithfulness = quality.get("faithfulness")
    if isinstance(faithfulness, Mapping):
        sentences.extend(_faithfulness_sentences(faithfulness, i, image))
    if not sentences:
        return ""
    items = "".join(f"<li>{s}</li>" for s in sentences)
    return f"<h3>How far this explanation can be trusted</h3><ul class='quality'>{items}</ul>"


def _faithfulness_sentences(figures: Mapping[str, Any], i: int, image: bool) -> list[str]:
    what = "parts of the image" if image else "features"
    filler = {
        "blur": "a blurred copy of the image",
        "baseline": "the model's reference input (baseline)",
    }.get(str(figures.get("reference", "")), "a reference value")
    sentences = []
    deletion = _at(figures.get("deletion_auc"), i)
    random_deletion = _at(figures.get("random_deletion_auc"), i)
    if deletion is not None:
        if random_deletion is None:
            sentences.append(
                f"Removing the {what} the explanation ranks highest (replacing them with "
                f"{filler}) lowers the model's confidence with an area under the curve (AUC) "
                f"of {deletion:.2f}; lower means the ranking matters more."
            )
        elif deletion < random_deletion:
            sentences.append(
                f"Removing the {what} the explanation ranks highest (replacing them with "
                f"{filler}) lowers the model's confidence faster than removing random ones "
                f"(AUC {deletion:.2f} vs {random_deletion:.2f}, lower is better): the "
                f"explanation is faithful by this test."
            )
        else:
            sentences.append(
                f"Removing the {what} the explanation ranks highest (replacing them with "
                f"{filler}) does not lower the model's confidence faster than removing random "
                f"ones (AUC {deletion:.2f} vs {random_deletion:.2f}, lower is better): by this "
                f"test the explanation does not single out what the model relies on."
            )
    insertion = _at(figures.get("insertion_auc"), i)
    random_insertion = _at(figures.get("random_insertion_auc"), i)
    if insertion is not None:
        start = f"Putting back the {what} the explanation ranks highest, starting from {filler},"
        if random_insertion is None:
            sentences.append(
                f"{start} restores the model's confidence with an AUC of {insertion:.2f}; "
                f"higher means the ranking matters more."
            )
        elif insertion > random_insertion:
            sentences.append(
                f"{start} restores the model's confidence faster than putting back random ones "
                f"(AUC {insertion:.2f} vs {random_insertion:.2f}, higher is better): the "
                f"explanation is faithful by this test."
            )
        else:
            sentences.append(
                f"{start} does not restore the model's confidence faster than putting back "
                f"random ones (AUC {insertion:.2f} vs {random_insertion:.2f}, higher is "
                f"better): by this test the explanation does not single out what the model "
                f"relies on."
            )
    infidelity = _at(figures.get("infidelity"), i)
    if infidelity is not None:
        sentences.append(
            f"Infidelity {infidelity:.3g} (lower is better): how far the weights fail to "
            f"predict how the model's output changes when the input is nudged at random."
        )
    sensitivity = _at(figures.get("max_sensitivity"), i)
    if sensitivity is not None:
        sentences.append(
            f"Sensitivity {sensitivity:.3g} (lower is better): how much the explanation itself "
            f"changes, at most, when the input changes very slightly."
        )
    return sentences


# --- charts ------------------------------------------------------------------------------------


def _chart_text(text: str, limit: int = 48) -> str:
    """Record text for matplotlib: shortened, and `$` escaped so mathtext leaves it alone."""
    short = text if len(text) <= limit else text[: limit - 1] + "…"
    return short.replace("$", r"\$")


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(source: str, alt: str, caption: str) -> str:
    return (
        f"<figure><img src='{source}' alt='{_e(alt)}'><figcaption>{caption}</figcaption></figure>"
    )


def _bars_png(reasons: Sequence[FeatureWeight], towards: str, directionless: bool) -> str:
    values = np.array([w.value for w in reasons], dtype=np.float64)
    names = [_chart_text(w.name) for w in reasons]
    figure = Figure(figsize=(7.5, 0.42 * len(reasons) + 1.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    y = np.arange(len(reasons))[::-1]  # the largest weight on top
    if directionless:
        colours = [UNSIGNED] * len(reasons)
    else:
        colours = [TOWARDS if v > 0 else AWAY for v in values]
    axes.barh(y, values, color=colours, height=0.65)
    axes.set_yticks(y, labels=names, fontsize=10)
    axes.axvline(0.0, color="#333333", linewidth=0.8)
    span = float(np.abs(values).max()) or 1.0
    for position, value in zip(y, values, strict=True):
        axes.text(
            value + (0.015 * span if value >= 0 else -0.015 * span),
            position,
            _weight(float(value), signed=not directionless),
            va="center",
            ha="left" if value >= 0 else "right",
            fontsize=9,
            color="#222222",
        )
    # Room for the value labels beyond the bar ends, on the sides that have bars.
    left = float(values.min()) - 0.2 * span if values.min() < 0 else -0.02 * span
    right = float(values.max()) + 0.2 * span if values.max() > 0 else 0.02 * span
    axes.set_xlim(left, right)
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(axis="x", labelsize=9)
    label = _chart_text(towards, 32)
    if directionless:
        axes.set_xlabel("weight (how sensitive the decision is; no direction)")
    else:
        axes.set_xlabel("weight")
        axes.legend(
            handles=[
                Patch(color=TOWARDS, label=f"pushed towards {label}"),
                Patch(color=AWAY, label=f"pushed away from {label}"),
            ],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16 if len(reasons) > 3 else -0.3),
            ncols=2,
            frameon=False,
            fontsize=10,
        )
    return _png(figure)


def _plane(heat: Floats) -> Floats:
    """An H x W map from C x H x W (channels summed) or H x W."""
    return heat.sum(axis=0) if heat.ndim == 3 else heat.reshape(heat.shape[-2:])


def _signed(heat: Floats, directionless: bool) -> bool:
    """Whether the map has evidence both ways (CAM-family maps, for one, have none against)."""
    return not directionless and float(heat.min()) < 0


def _is_photo(given: Floats) -> bool:
    return given.ndim == 3 and given.shape[0] == 3


def _picture(given: Floats) -> tuple[Floats, str | None]:
    """The input as imshow takes it: H x W (grey) or H x W x 3, scaled to [0, 1]."""
    if _is_photo(given):
        picture = np.moveaxis(given, 0, -1)
        colormap = None
    else:
        picture = given.mean(axis=0) if given.ndim == 3 else given
        colormap = "gray"
    low, high = float(picture.min()), float(picture.max())
    return (picture - low) / (high - low) if high > low else np.zeros_like(picture), colormap


def _heatmap_png(heat: Floats, given: Floats | None, towards: str, directionless: bool) -> str:
    plane = _plane(heat)
    height, width = plane.shape
    extent = (0.0, float(width), float(height), 0.0)  # the input and the map share it
    scale = float(np.abs(plane).max()) or 1.0
    signed = _signed(heat, directionless)
    if signed:
        colormap, norm = colormaps["RdBu_r"], Normalize(-scale, scale)
    else:
        colormap, norm = colormaps["Reds"], Normalize(0.0, scale)
    panels = 1 if given is None else 2
    figure = Figure(figsize=(3.3 * panels + 1.2, 3.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    axes[-1].imshow(plane, cmap=colormap, norm=norm, interpolation="nearest", extent=extent)
    axes[-1].set_title("The explanation map", fontsize=10)
    if given is not None:
        picture, grey = _picture(given)
        axes[0].imshow(picture, cmap=grey, interpolation="nearest", extent=extent)
        axes[0].set_title("The input", fontsize=10)
        if grey is None:  # a photograph: it shows through where the map is weak
            overlay = colormap(norm(plane))
            overlay[..., 3] = 0.85 * np.clip(np.abs(plane) / scale, 0.0, 1.0)
            axes[-1].imshow(picture, interpolation="nearest", extent=extent)
            axes[-1].imshow(overlay, interpolation="nearest", extent=extent)
        else:  # grey: its outline over the map keeps the map's colours true to the scale
            rows, columns = picture.shape
            centres = np.arange(columns) + 0.5, np.arange(rows) + 0.5
            axes[-1].contour(*centres, picture, levels=[0.5], colors="black", linewidths=1.4)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=list(axes), shrink=0.85)
    if directionless:
        bar.set_ticks([0.0, scale], labels=["little", "much"])
        bar.set_label("sensitivity (no direction)", fontsize=9)
    else:
        if signed:
            bar.set_ticks([-scale, 0.0, scale], labels=["against", "0", "for"])
        else:
            bar.set_ticks([0.0, scale], labels=["0", "strong"])
        bar.set_label(f"evidence for {_chart_text(towards, 24)}", fontsize=9)
    bar.ax.tick_params(labelsize=9)
    return _png(figure)


# --- the page ----------------------------------------------------------------------------------


def _instance_section(
    record: AuditRecord, i: int, maps: Floats | None, given: Floats | None, *, numbered: bool
) -> str:
    title = f"Case {i + 1} of {_instance_count(record)}" if numbered else "The decision"
    return (
        f"<section class='instance' id='instance-{i}'><h2>{title}</h2>"
        f"{_decision(record, i)}{_reasons_section(record, i, maps, given)}"
        f"{_quality_section(record, i)}</section>"
    )


def _rows(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table; the values are HTML already (escaped by the caller)."""
    body = "".join(f"<tr><th scope='row'>{k}</th><td>{v}</td></tr>" for k, v in rows if v)
    return f"<table>{body}</table>"


def _params(params: Mapping[str, Any]) -> str:
    if not params:
        return "the method's defaults"
    return ", ".join(
        f"<code>{_e(k)}</code> = <code>{_e(json.dumps(v, ensure_ascii=False))}</code>"
        for k, v in sorted(params.items())
    )


def _seed(record: AuditRecord) -> int | None:
    seed = record.seed if record.seed is not None else record.quality.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _how_made(record: AuditRecord) -> str:
    note = METHOD_NOTES.get(record.method) or generic_note(record.method)
    seed = _seed(record)
    method = f"{_e(note.title)} (<code>{_e(record.method)}</code>)" if record.method else ""
    rows = [
        ("Model", f"<code>{_e(record.model)}</code>"),
        ("Model version", _e(record.model_version)),
        ("Model file (SHA-256)", f"<code class='digest'>{_e(record.model_digest)}</code>"),
        ("Explanation method", method),
        ("Parameters", _params(record.params) if record.method else ""),
        ("Random seed", "" if seed is None else f"<code>{seed}</code>"),
        (
            "Reference compared against (digest)",
            f"<code class='digest'>{_e(record.baseline_digest)}</code>"
            if record.baseline_digest
            else "",
        ),
        ("When", _e(_when(record.time))),
        ("Request", f"<code>{_e(record.request_id)}</code>" if record.request_id else ""),
        ("About (subject)", f"<code>{_e(record.subject_id)}</code>" if record.subject_id else ""),
        ("Requested by", f"<code>{_e(record.caller)}</code>" if record.caller else ""),
    ]
    stopped = record.quality.get("stopped_by")
    warning = (
        f"<p class='note'>The computation was stopped early ({_e(stopped)}) before all its "
        f"planned samples were evaluated: this explanation is partial and less precise than "
        f"planned.</p>"
        if stopped
        else ""
    )
    return f"<section><h2>How the explanation was made</h2>{_rows(rows)}{warning}</section>"


def _caveats(record: AuditRecord) -> str:
    if not record.method:
        return ""
    note = METHOD_NOTES.get(record.method) or generic_note(record.method)
    return (
        "<section><h2>What this method can and cannot tell you</h2>"
        f"<p class='caveat' data-method='{_e(record.method)}'>{_e(note.text)}</p>"
        "<p class='aside'>Any explanation is a simplified account of a complex model. It "
        "describes how the model behaves around this case, not causes in the world, and "
        "another method can give other reasons for the same decision.</p></section>"
    )


def _annex(record: AuditRecord, integrity: str | None) -> str:
    shape = " × ".join(str(n) for n in record.input_shape)
    evaluations = record.quality.get("model_evaluations")
    rows = [
        ("Integrity", _e(integrity) if integrity else ""),
        ("Record id", f"<code>{_e(record.record_id)}</code>"),
        ("Record kind", _e(record.kind.value)),
        ("Time (UTC, ISO 8601)", _e(datetime.fromtimestamp(record.time, tz=UTC).isoformat())),
        ("Input digest (HMAC-SHA256)", f"<code class='digest'>{_e(record.input_digest)}</code>"),
        ("Input", f"{_e(record.input_dtype)} {_e(shape)}".strip()),
        ("Attributions shape", _e(" × ".join(str(n) for n in record.attributions_shape))),
        ("Model evaluations", _e(evaluations) if evaluations else ""),
    ]
    versions = "".join(
        f"<tr><td>{_e(name)}</td><td><code>{_e(version)}</code></td></tr>"
        for name, version in sorted(record.versions.items())
    )
    table = (
        f"<h3>Library versions</h3><table class='versions'>{versions}</table>" if versions else ""
    )
    return f"<section class='annex'><h2>Technical annex</h2>{_rows(rows)}{table}</section>"


_STYLE = """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 52rem; margin: 2rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
.lead, .aside { color: #555; }
.aside { font-size: .9rem; }
.decision { font-size: 1.15rem; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: .5rem .8rem; }
.integrity { background: #eef6ee; border-left: 4px solid #3c8d40; padding: .5rem .8rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #555; }
ul.reasons li.towards::marker { color: #c0392b; }
ul.reasons li.away::marker { color: #2471a3; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { text-align: left; vertical-align: top; padding: .25rem .8rem .25rem 0; }
th { font-weight: 600; white-space: nowrap; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .9em; }
code.digest { word-break: break-all; }
.annex { font-size: .88rem; color: #333; }
@media print { section.instance { break-inside: avoid; } }
"""


def _page(record: AuditRecord, sections: Sequence[str], integrity: str | None) -> str:
    title = f"Explanation of a decision by {record.model}" if record.model else "Explanation"
    banner = f"<p class='integrity'>{_e(integrity)}</p>" if integrity else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f"<p class='lead'>Recorded on {_e(_when(record.time))} · record "
        f"<code>{_e(record.record_id)}</code></p>{banner}"
        + "".join(sections)
        + _how_made(record)
        + _caveats(record)
        + _annex(record, integrity)
        + "</body></html>\n"
    )
