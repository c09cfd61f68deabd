"""The NumPy scores (ecmf_ray/train/metrics.py) equal scikit-learn's, the library MER2025's scoring uses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ecmf_ray.train.metrics import accuracy, confusion, per_class_f1, waf


def cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    drawn = []
    for n in (1, 2, 7, 50, 500):
        for classes in (1, 2, 6):
            y_true = rng.integers(0, classes, n)
            y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 6, n))
            drawn.append((y_true, y_pred))
    # A class only predicted, one only true, all wrong, all right.
    drawn += [
        (np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])),
        (np.array([0, 3, 3, 5]), np.array([0, 0, 0, 0])),
        (np.array([1, 2, 3]), np.array([2, 3, 1])),
        (np.array([4, 4, 4]), np.array([4, 4, 4])),
    ]
    return drawn


@pytest.mark.parametrize("y_true, y_pred", cases())
def test_scores_equal_scikit_learns(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    assert waf(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, average="weighted", zero_division=0), abs=1e-12
    )
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    six = list(range(6))
    np.testing.assert_array_equal(
        confusion(y_true, y_pred, six), confusion_matrix(y_true, y_pred, labels=six)
    )
    f1, support = per_class_f1(y_true, y_pred, six)
    np.testing.assert_allclose(
        f1, f1_score(y_true, y_pred, labels=six, average=None, zero_division=0), atol=1e-12
    )
    np.testing.assert_array_equal(support, np.bincount(y_true, minlength=6))


def test_a_fold_worker_imports_no_scikit_learn() -> None:
    """What each fold's task and Ray Train worker import, in a fresh interpreter: scikit-learn (and
    scipy.stats) would cost each of those processes ~3 CPU-seconds."""
    code = "import sys, ecmf_ray.train.distributed; print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
