"""The paper's Norm: a per-dimension z-score fitted on the training fold's present rows only."""

from __future__ import annotations

import numpy as np

_MIN_STD = 1e-6


def fit_standardizer(x: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` over the rows of ``x`` where ``present``; constant dims get std 1."""
    rows = x[present]
    if len(rows) == 0:
        return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    mean = rows.mean(axis=0, dtype=np.float64)
    std = rows.std(axis=0, dtype=np.float64)
    std = np.where(std < _MIN_STD, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def identity_standardizer(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``train.standardize=false`` uses: mean 0, std 1."""
    return np.zeros(dim, np.float32), np.ones(dim, np.float32)


def apply_standardizer(x: np.ndarray, mean: np.ndarray, std: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` as float32; absent rows become zero, i.e. the training mean."""
    out = ((x - mean) / std).astype(np.float32)
    out[~present] = 0.0
    return out
