"""Run by .venv-peers' Python (scikit-learn, joblib): train the tabular model MLServer serves.

    peer_train.py OUT_DIR [logistic|mlp] [HIDDEN, e.g. 64,64]

On the first 8 features of breast_cancer, standardized: a LogisticRegression (the tests'), or
an MLPClassifier with hidden ReLU layers of the given widths, two of 64 by default
(bench/remote_throughput.py --model mlp: a model whose compute weighs against a call's fixed
cost). Writes OUT_DIR/model.joblib (MLServer's
artifact; Sidelight never reads it) and OUT_DIR/model.json: the fitted weights, from which the
same model is built as a local torch.export file, and the standardized rows. JSON floats
round-trip float64 exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

FEATURES = 8  # exact_shapley enumerates 2^8 coalitions


def main(out: Path, kind: str, hidden: tuple[int, ...] = (64, 64)) -> None:
    data, labels = load_breast_cancer(return_X_y=True)
    data = data[:, :FEATURES]
    rows = (data - data.mean(0)) / data.std(0)  # 569 x 8, float64
    figures: dict[str, Any] = {"kind": kind, "rows": rows.tolist()}
    model: Any
    if kind == "logistic":
        model = LogisticRegression(max_iter=1000).fit(rows, labels)
        figures["coef"] = model.coef_[0].tolist()
        figures["intercept"] = float(model.intercept_[0])
    else:  # hidden ReLU layers, then one logistic unit: p(class 1)
        model = MLPClassifier(hidden, max_iter=500, random_state=0).fit(rows, labels)
        figures["layers"] = [
            {"weight": w.tolist(), "bias": b.tolist()}
            for w, b in zip(model.coefs_, model.intercepts_, strict=True)
        ]
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    (out / "model.json").write_text(json.dumps(figures))


if __name__ == "__main__":
    widths = tuple(int(w) for w in sys.argv[3].split(",")) if len(sys.argv) > 3 else (64, 64)
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "logistic", widths)
