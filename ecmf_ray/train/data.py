"""The training inputs: the manifest joined with every branch's features, one row per video.

Missing features (a branch failed for a video, wrote NaN, or never ran for it) are never an
error: the row gets zeros and ``present[row, branch] = False``. Standardisation is fitted on
present rows only, encoders see the training mean (zero) instead, and the fusion models drop the
branch (ECMF: key padding mask; baseline attention: zero weight). Duplicate ids in a branch keep
their first row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.features import branch_dir, load_branch
from ecmf_ray.labels import EMOTION_INDEX
from ecmf_ray.train.folds import assign_folds

logger = logging.getLogger(__name__)

PREDICT_SPLITS = ("test", "unlabeled")


@dataclass(frozen=True)
class FeatureSet:
    """Aligned arrays for every manifest row (manifest order).

    ``labels``: class index, -1 where the row is not a labelled training row. ``folds``: held-out
    fold of each labelled row, -1 elsewhere. ``features[b]``: ``(N, D_b)`` float32, zeros where
    ``present[:, b]`` is False.
    """

    video_ids: np.ndarray
    split: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    branches: tuple[str, ...]
    features: tuple[np.ndarray, ...]
    present: np.ndarray

    @property
    def dims(self) -> list[int]:
        return [f.shape[1] for f in self.features]

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1

    def predict_rows(self) -> np.ndarray:
        """Rows to predict with every fold model: the test and unlabelled candidates."""
        return np.flatnonzero(np.isin(self.split, PREDICT_SPLITS))


def align_branch(manifest_ids: pd.Index, ids: list[str], matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(features, present)`` for ``manifest_ids`` from one branch's ``(ids, matrix)``."""
    index = pd.Index(ids)
    keep = ~index.duplicated(keep="first")
    index, matrix = index[keep], matrix[keep]
    rows = index.get_indexer(manifest_ids)
    found = rows >= 0
    out = np.zeros((len(manifest_ids), matrix.shape[1]), dtype=np.float32)
    out[found] = matrix[rows[found]]
    present = found & np.isfinite(out).all(axis=1)
    out[~present] = 0.0
    return out, present


def labels_of(manifest: pd.DataFrame) -> np.ndarray:
    """Class index of each labelled training row, -1 elsewhere."""
    labelled = manifest["split"].eq("train") & manifest["label"].isin(list(EMOTION_INDEX))
    return np.where(labelled, manifest["label"].map(EMOTION_INDEX).fillna(-1), -1).astype(np.int64)


def load_feature_set(run_dir: str, branches: list[str], n_folds: int, seed: int) -> FeatureSet:
    """Read ``run_dir``'s manifest and features for ``branches`` and assign stratified folds."""
    manifest = read_manifest(manifest_path(run_dir))
    ids = pd.Index(manifest["video_id"].astype(str))
    features, presence = [], []
    for branch in branches:
        if not storage.exists(branch_dir(run_dir, branch)):
            raise FileNotFoundError(
                f"no features for branch '{branch}' at {branch_dir(run_dir, branch)} "
                "(run `ecmf extract` first, or drop the branch from model.branches)"
            )
        matrix, present = align_branch(ids, *load_branch(run_dir, branch))
        missing = int((~present).sum())
        if missing:
            logger.warning("branch %s: %d of %d videos have no feature; masked", branch, missing, len(ids))
        features.append(matrix)
        presence.append(present)
    labels = labels_of(manifest)
    return FeatureSet(
        video_ids=ids.to_numpy(dtype=object),
        split=manifest["split"].astype(str).to_numpy(dtype=object),
        labels=labels,
        folds=assign_folds(labels, n_folds, seed),
        branches=tuple(branches),
        features=tuple(features),
        present=np.stack(presence, axis=1),
    )
