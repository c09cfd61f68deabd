"""WAF (the MER2025 score), accuracy, and the cross-validation summary written to metrics.json."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ecmf_ray.labels import EMOTIONS


def waf(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted F1 over the classes present, exactly as MER2025 scores a submission."""
    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(accuracy_score(y_true, y_pred))


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation (over folds)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def cv_summary(per_fold: list[dict], y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """cv_waf / cv_accuracy over folds (the baseline's CV score), and pooled out-of-fold details.

    ``per_fold``: one dict per fold with at least ``waf`` and ``accuracy`` (its best epoch's).
    ``y_true``/``y_pred``: class indices of every out-of-fold prediction.
    """
    classes = list(range(len(EMOTIONS)))
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return {
        "cv_waf": mean_std([f["waf"] for f in per_fold]),
        "cv_accuracy": mean_std([f["accuracy"] for f in per_fold]),
        "oof_waf": waf(y_true, y_pred),
        "oof_accuracy": accuracy(y_true, y_pred),
        "per_fold": per_fold,
        "per_class_f1": {name: float(v) for name, v in zip(EMOTIONS, per_class, strict=True)},
        "confusion_matrix": {
            "labels": list(EMOTIONS),
            "rows": "true",
            "columns": "predicted",
            "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        },
    }
