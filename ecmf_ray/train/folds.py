"""Stratified, seeded K-fold assignment over the labelled training rows."""

from __future__ import annotations

import numpy as np


def assign_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """The held-out fold of every row; ``-1`` for rows without a label (``labels < 0``).

    The same labels, ``n_folds`` and ``seed`` always give the same folds.
    """
    labels = np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    if n_folds < 2:
        raise ValueError(f"train.folds must be at least 2, got {n_folds}")
    if len(labelled) < n_folds:
        raise ValueError(f"{len(labelled)} labelled training videos cannot fill {n_folds} folds")
    # Imported here: only the driver draws folds, and scikit-learn costs every fold worker ~3 s to import.
    from sklearn.model_selection import StratifiedKFold

    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labelled)), labels[labelled])):
        folds[labelled[held_out]] = fold
    return folds
