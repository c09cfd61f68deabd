"""WAF (the MER2025 score), accuracy, and the cross-validation summary written to metrics.json.

NumPy, not scikit-learn: every fold worker (and the task that drives it) imports this module, and
importing scikit-learn (scipy.stats with it) costs ~3 CPU-seconds per process, more than a small fold's
training; an epoch's score is also ~15x faster (1,200 clips). tests/train/test_metrics.py checks every
function against scikit-learn's ``f1_score`` / ``accuracy_score`` / ``confusion_matrix``.
"""

from __future__ import annotations

import numpy as np

from ecmf_ray.labels import EMOTIONS


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> np.ndarray:
    """Counts of (true, predicted) over ``labels`` (ascending; rows true, columns predicted); pairs with
    another value are left out."""
    labels_ = np.asarray(labels)
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    keep = np.isin(y_true, labels_) & np.isin(y_pred, labels_)
    rows, cols = np.searchsorted(labels_, y_true[keep]), np.searchsorted(labels_, y_pred[keep])
    n = len(labels_)
    return np.bincount(rows * n + cols, minlength=n * n).reshape(n, n)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """F1 of each of ``labels`` (ascending; 0 where undefined: never true nor predicted) and its support."""
    matrix = confusion(y_true, y_pred, labels)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    denominator = support + matrix.sum(axis=0)  # 2*tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1, support


def waf(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted F1 over the classes present (true or predicted), weighted by true support, exactly as
    MER2025 scores a submission (scikit-learn's ``f1_score(average="weighted", zero_division=0)``)."""
    labels = np.union1d(np.asarray(y_true), np.asarray(y_pred)).tolist()
    if not labels:
        return 0.0
    f1, support = per_class_f1(y_true, y_pred, labels)
    total = support.sum()
    return float((f1 * support).sum() / total) if total else 0.0


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and population standard deviation (over folds)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def cv_summary(per_fold: list[dict], y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """cv_waf / cv_accuracy over folds (the baseline's CV score), and pooled out-of-fold details.

    ``per_fold``: one dict per fold with at least ``waf`` and ``accuracy`` (its best epoch's).
    ``y_true``/``y_pred``: class indices of every out-of-fold prediction.
    """
    classes = list(range(len(EMOTIONS)))
    per_class, _ = per_class_f1(y_true, y_pred, classes)
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
            "matrix": confusion(y_true, y_pred, classes).tolist(),
        },
    }
