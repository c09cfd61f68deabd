"""The training inputs: the manifest joined with every branch's features, one row per video.

Missing features (a branch failed for a video, wrote NaN, or never ran for it) are never an
error: the row gets zeros and ``present[row, branch] = False``. Standardisation is fitted on
present rows only, encoders see the training mean (zero) instead, and the fusion models drop the
branch (ECMF: key padding mask; baseline attention: zero weight). Duplicate ids in a branch keep
their first row.

``train.labels`` names a label table (video_id, label) that replaces the manifest's labels: a
labelled training video takes its new class, a test or unlabelled video joins every fold's training
rows with its (pseudo-)label and is never validated on, and a video labelled ``unusable``
(:data:`~ecmf_ray.labels.EXCLUDED`) is left out: neither trained nor validated on. Folds are always
drawn on the manifest's labels (``train.folds``, ``seed``), whatever ``train.labels`` says, so every
experiment of a run (ablation rows, ensemble members, weak classifiers) holds out the same videos
together and their out-of-fold predictions can be scored against the same labels on the same folds.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.features import branch_dir, load_branch
from ecmf_ray.labels import EMOTION_INDEX, LABEL_CHOICES
from ecmf_ray.train.folds import assign_folds

logger = logging.getLogger(__name__)

PREDICT_SPLITS = ("test", "unlabeled")


@dataclass(frozen=True)
class FeatureSet:
    """Aligned arrays for every manifest row (manifest order).

    ``labels``: class index, -1 where the row is not a labelled training row (or is left out).
    ``folds``: held-out fold of each labelled row, -1 elsewhere. ``features[b]``: ``(N, D_b)`` float32,
    zeros where ``present[:, b]`` is False.
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

    def select(self, branches: list[str] | tuple[str, ...]) -> FeatureSet:
        """The same rows with only ``branches``, in that order (no copy of the feature arrays)."""
        missing = [b for b in branches if b not in self.branches]
        if missing:
            raise ValueError(f"branch(es) {missing} were not loaded (loaded: {list(self.branches)})")
        index = [self.branches.index(b) for b in branches]
        return replace(
            self,
            branches=tuple(branches),
            features=tuple(self.features[i] for i in index),
            present=self.present[:, index],
        )


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


def read_label_table(uri: str) -> pd.Series:
    """video_id -> emotion (or :data:`~ecmf_ray.labels.EXCLUDED`) from a CSV or Parquet file (``.parquet``)
    with columns ``video_id, label``.

    A row with an empty label is skipped (no decision). Bad files are errors naming the file and row
    (data rows, counted from 1).
    """
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: no such label file")
    if uri.endswith(".parquet"):
        df = storage.read_table(uri).to_pandas()
    else:
        with storage.open_file(uri, "rb") as f:
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
    missing = [c for c in ("video_id", "label") if c not in df.columns]
    if missing:
        raise ValueError(f"{uri}: missing column(s) {', '.join(missing)}; a label table has video_id, label")
    ids = df["video_id"].astype(str).str.strip()
    labels = df["label"].fillna("").astype(str).str.strip()
    unknown = np.flatnonzero(~labels.isin(LABEL_CHOICES) & labels.ne(""))
    if len(unknown):
        row = unknown[0]
        raise ValueError(
            f"{uri}: row {row + 1} ({ids.iloc[row]}): '{labels.iloc[row]}' is not one of "
            f"{', '.join(LABEL_CHOICES)}"
        )
    decided = pd.DataFrame({"video_id": ids, "label": labels})[labels.ne("")].drop_duplicates()
    repeated = np.flatnonzero(decided["video_id"].duplicated())
    if len(repeated):
        row = repeated[0]
        video = decided["video_id"].iloc[row]
        raise ValueError(f"{uri}: row {decided.index[row] + 1}: '{video}' appears again with another label")
    return pd.Series(decided["label"].to_numpy(), index=decided["video_id"].to_numpy(), name="label")


def label_table_digest(table: pd.Series) -> str:
    """A short hash of a label table's content (experiments record it, not the file's path)."""
    return hashlib.sha1(table.sort_index().to_json().encode()).hexdigest()[:16]


def replace_labels(
    video_ids: np.ndarray, split: np.ndarray, labels: np.ndarray, table: pd.Series, source: str
) -> np.ndarray:
    """``labels`` with ``table``'s classes.

    A labelled training video takes its new class; a test or unlabelled video gets one too and becomes
    a training-only row (it has no fold: folds come from the manifest's labels). A video the table
    leaves out (:data:`~ecmf_ray.labels.EXCLUDED`) gets -1, no class.
    """
    rows = pd.Index(video_ids).get_indexer(table.index)
    if (rows < 0).any():
        raise ValueError(f"{source}: video '{table.index[rows < 0][0]}' is not in the manifest")
    classes = table.map(EMOTION_INDEX).fillna(-1).to_numpy(dtype=np.int64)
    pseudo_rows = rows[(labels[rows] < 0) & (classes >= 0)]
    unlabelled_train = pseudo_rows[~np.isin(split[pseudo_rows], PREDICT_SPLITS)]
    if len(unlabelled_train):
        video = video_ids[unlabelled_train[0]]
        raise ValueError(f"{source}: video '{video}' is a training video without a usable manifest label")
    out = labels.copy()
    out[rows] = classes
    return out


def load_feature_set(
    run_dir: str, branches: list[str], n_folds: int, seed: int, labels_uri: str | None = None
) -> FeatureSet:
    """Read ``run_dir``'s manifest and features for ``branches`` and assign stratified folds.

    ``labels_uri``: a label table (``train.labels``) in place of the manifest's labels.
    """
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
    original = labels_of(manifest)
    data = FeatureSet(
        video_ids=ids.to_numpy(dtype=object),
        split=manifest["split"].astype(str).to_numpy(dtype=object),
        labels=original,
        # On the manifest's labels: pseudo-labelled rows (-1 there) are never held out.
        folds=assign_folds(original, n_folds, seed),
        branches=tuple(branches),
        features=tuple(features),
        present=np.stack(presence, axis=1),
    )
    return with_label_table(data, labels_uri)


def experiment_inputs(
    base: FeatureSet, branches: list[str], n_folds: int, seed: int, labels_uri: str | None = None
) -> FeatureSet:
    """One experiment's inputs from features loaded on the manifest's labels for several experiments: its
    branches, its folds (drawn on the manifest's labels with its own count and seed) and its labels."""
    data = replace(base.select(branches), folds=assign_folds(base.labels, n_folds, seed))
    return with_label_table(data, labels_uri)


def with_label_table(data: FeatureSet, labels_uri: str | None) -> FeatureSet:
    """``data`` (on the manifest's labels) learning ``train.labels`` instead; unchanged when None.

    A row the table leaves out has no class and no fold: it is neither trained nor validated on.
    """
    if not labels_uri:
        return data
    table = read_label_table(labels_uri)
    labels = replace_labels(data.video_ids, data.split, data.labels, table, f"train.labels ({labels_uri})")
    return replace(data, labels=labels, folds=np.where(labels < 0, -1, data.folds))
