"""The report's scores, each against a named label set (pure functions; no Ray, no files).

A run's experiments learn different labels (the manifest's, or the relabel vote's), and a score
against the labels a model learnt is only comparable with scores against the same labels. So every
row of the report is also scored against one fixed reference: the manifest's (original) labels, on
the run's shared folds (``train.folds`` and ``seed`` drawn on the original labels, the folds every
experiment holds out, see :func:`ecmf_ray.train.data.load_feature_set`). A row whose fold count or
seed differs has its own split; its out-of-fold predictions are still grouped by the shared folds, so
the per-fold mean covers the same videos in every row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.train.data import labels_of
from ecmf_ray.train.folds import assign_folds
from ecmf_ray.train.metrics import waf


@dataclass(frozen=True)
class Score:
    """WAF of out-of-fold predictions against one label set: mean over folds, and pooled."""

    cv: float
    pooled: float
    per_fold: tuple[float, ...]


def reference_labels(run_dir: str, n_folds: int, seed: int) -> pd.DataFrame:
    """``video_id, label, fold``: every labelled training video's original label and shared fold."""
    manifest = read_manifest(manifest_path(run_dir))
    labels = labels_of(manifest)
    folds = assign_folds(labels, n_folds, seed)
    rows = labels >= 0
    return pd.DataFrame(
        {
            "video_id": manifest["video_id"].astype(str).to_numpy()[rows],
            "label": np.array(EMOTIONS, dtype=object)[labels[rows]],
            "fold": folds[rows],
        }
    )


def score_against(oof: pd.DataFrame, reference: pd.DataFrame) -> Score | None:
    """WAF of ``oof`` (``video_id, predicted``) against ``reference`` (``video_id, label, fold``).

    Per fold of ``reference``, then the mean over folds; and over every video pooled. Only videos in
    both count (a reference without folds is scored pooled only). None when they share no video.
    """
    merged = oof[["video_id", "predicted"]].merge(reference, on="video_id")
    if merged.empty:
        return None
    per_fold: tuple[float, ...] = ()
    if "fold" in merged:
        per_fold = tuple(
            waf(group["label"].to_numpy(), group["predicted"].to_numpy())
            for _, group in merged.groupby("fold", sort=True)
        )
    pooled = waf(merged["label"].to_numpy(), merged["predicted"].to_numpy())
    return Score(cv=float(np.mean(per_fold)) if per_fold else pooled, pooled=pooled, per_fold=per_fold)


def truth_reference(truth: pd.Series | None) -> pd.DataFrame | None:
    """Known true labels (video_id -> class) as a reference without folds."""
    if truth is None:
        return None
    return pd.DataFrame({"video_id": truth.index.astype(str), "label": truth.to_numpy()})


def truth_waf(predictions: pd.DataFrame, truth: pd.Series | None) -> float | None:
    """Pooled WAF of predictions (``video_id, predicted``) against known true labels, if any overlap."""
    reference = truth_reference(truth)
    score = score_against(predictions, reference) if reference is not None else None
    return score.pooled if score is not None else None


def selection(metrics: Mapping[str, Any]) -> tuple[str, float | None]:
    """``(train.select_epoch, mean fold-selected WAF)`` of an experiment's metrics.json.

    The second value is the mean over folds of each held-out fold's best WAF over all epochs (the
    score the MER2025 baselines report); it only differs from ``cv_waf`` when the epoch was picked on
    an inner split (``inner``), and is None for an experiment that did not record it.
    """
    per_fold = metrics.get("per_fold") or [{}]
    values = [f.get("fold_selected_waf") for f in per_fold]
    mean = float(np.mean(values)) if None not in values else None
    return str(per_fold[0].get("select_epoch", "fold")), mean


@dataclass(frozen=True)
class RowScores:
    """Every score of one report row (an experiment or the ensemble's vote), each on a named label set.

    ``original``: out-of-fold predictions against the manifest's labels on the shared folds.
    ``learnt``: the row's own cv_waf, against the labels it learnt (``labels``: original | refined);
    against refined labels it measures agreement with the relabel vote, not accuracy.
    ``fold_selected``: with ``select_epoch=inner``, the cv_waf had each fold's epoch been picked on
    the held-out fold itself. ``truth_oof`` / ``test``: out-of-fold / test predictions against known
    true labels (synthetic data).
    """

    labels: str
    original: Score | None
    learnt: float
    select_epoch: str
    fold_selected: float | None
    truth_oof: float | None
    test: float | None

    @property
    def agreement(self) -> float | None:
        """Agreement with the relabel vote: the cv_waf against refined labels (None for original labels)."""
        return self.learnt if self.labels == "refined" else None


def row_scores(
    oof: pd.DataFrame,
    test: pd.DataFrame,
    learnt_cv: float,
    labels: str,
    reference: pd.DataFrame | None,
    truth: pd.Series | None,
    select: tuple[str, float | None] = ("fold", None),
) -> RowScores:
    """A row's scores from its predictions (``video_id, predicted``) and its own cv_waf."""
    truth_table = truth_reference(truth)
    truth_oof = score_against(oof, truth_table) if truth_table is not None else None
    return RowScores(
        labels=labels,
        original=score_against(oof, reference) if reference is not None else None,
        learnt=float(learnt_cv),
        select_epoch=select[0],
        fold_selected=select[1] if select[0] == "inner" else None,
        truth_oof=truth_oof.pooled if truth_oof is not None else None,
        test=truth_waf(test, truth),
    )
