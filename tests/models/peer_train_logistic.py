"""Run by .venv-peers' Python (scikit-learn, joblib): train the tabular model MLServer serves.

    peer_train_logistic.py OUT_DIR

Writes OUT_DIR/model.joblib (MLServer's artifact; Sidelight never reads it) and
OUT_DIR/logistic.json: the fitted coefficients and intercept, from which the test builds the
same model as a local torch.export file, and the standardized rows the test explains. JSON
floats round-trip float64 exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

FEATURES = 8  # exact_shapley enumerates 2^8 coalitions


def main(out: Path) -> None:
    data, labels = load_breast_cancer(return_X_y=True)
    data = data[:, :FEATURES]
    rows = (data - data.mean(0)) / data.std(0)  # 569 x 8, float64
    model = LogisticRegression(max_iter=1000).fit(rows, labels)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    figures = {
        "coef": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
        "rows": rows.tolist(),
    }
    (out / "logistic.json").write_text(json.dumps(figures))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
