"""Ensemble learning (ECMF 3.4.2) and the ablation table's rows, both as config-defined variants.

An ensemble member (``finalize.ensemble``) is the ``model:``/``train:`` config plus the member's
overrides (a dropped branch, no modality token, another seed, ...), trained on the refined labels.
The final label of a video is the majority vote of the members' predictions, ties broken by the
members' mean probability; the ensemble's own score is the same vote over their out-of-fold predictions.

Ablation rows (``finalize.ablation``) are cumulative like the paper's Table 1: a row trains the config
with its own and every earlier row's overrides, on the labels its row (or the nearest earlier) names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray.finalize.experiments import Experiment
from ecmf_ray.finalize.vote import ensemble_vote
from ecmf_ray.labels import EMOTION_INDEX, EMOTIONS
from ecmf_ray.train.metrics import accuracy, cv_summary, waf
from ecmf_ray.train.outputs import PROB_COLUMNS

LABEL_SOURCES = ("original", "refined")


@dataclass(frozen=True)
class Variant:
    """One training run of finalize: a display name, overrides and which labels it learns."""

    name: str
    overrides: tuple[str, ...]
    labels: str = "refined"


def _entry(entry: Any, key: str, index: int, section: str) -> tuple[str, tuple[str, ...], str | None]:
    if key not in entry:
        raise ValueError(f"{section}[{index}] needs a '{key}'")
    labels = entry.get("labels")
    if labels is not None and labels not in LABEL_SOURCES:
        raise ValueError(
            f"{section}[{index}].labels must be one of {', '.join(LABEL_SOURCES)}, not {labels!r}"
        )
    unknown = set(entry) - {key, "overrides", "labels"}
    if unknown:
        raise ValueError(f"{section}[{index}] has unknown key(s) {', '.join(sorted(unknown))}")
    return str(entry[key]), tuple(str(o) for o in entry.get("overrides") or ()), labels


def ensemble_variants(entries: Sequence[Any], labels: str) -> list[Variant]:
    """``finalize.ensemble`` entries (``{name, overrides}``), all trained on ``labels``."""
    variants = []
    for i, entry in enumerate(entries):
        name, overrides, own = _entry(entry, "name", i, "finalize.ensemble")
        variants.append(Variant(name, overrides, own or labels))
    if len({v.name for v in variants}) != len(variants):
        raise ValueError("finalize.ensemble names must be distinct")
    return variants


def ablation_variants(entries: Sequence[Any], labels: str) -> list[Variant]:
    """``finalize.ablation`` rows (``{row, overrides, labels}``), each carrying every earlier row's changes."""
    variants: list[Variant] = []
    overrides: tuple[str, ...] = ()
    for i, entry in enumerate(entries):
        row, own, row_labels = _entry(entry, "row", i, "finalize.ablation")
        overrides, labels = overrides + own, row_labels or labels
        variants.append(Variant(row, overrides, labels))
    return variants


@dataclass(frozen=True)
class EnsembleResult:
    """The members' vote: out-of-fold (with its scores) and on the test/unlabelled videos."""

    oof: pd.DataFrame  # video_id, label, predicted
    test: pd.DataFrame  # video_id, split, predicted, agreement, prob_<class> (members' mean)
    metrics: dict[str, Any]  # cv_summary of the OOF vote, plus the members' mean OOF WAF


def _stack(frames: list[pd.DataFrame], ids: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """(samples, members) predicted classes and (members, samples, classes) probabilities."""
    aligned = [f.set_index("video_id").reindex(ids) for f in frames]
    predictions = np.stack([a["predicted"].map(EMOTION_INDEX).to_numpy(dtype=np.int64) for a in aligned], 1)
    return predictions, np.stack([a[PROB_COLUMNS].to_numpy(dtype=np.float64) for a in aligned])


def vote(members: Sequence[Experiment]) -> EnsembleResult:
    """Majority vote of ``members`` over their out-of-fold and test predictions."""
    if not members:
        raise ValueError("finalize.ensemble is empty")
    first = members[0].oof.set_index("video_id")["label"]
    for m in members[1:]:
        if not m.oof.set_index("video_id")["label"].reindex(first.index).equals(first):
            raise ValueError(f"ensemble member '{m.name}' learnt other labels than '{members[0].name}'")
    names = np.array(EMOTIONS, dtype=object)

    predictions, probabilities = _stack([m.oof for m in members], first.index)
    oof_pred = ensemble_vote(predictions, probabilities)
    y_true = first.map(EMOTION_INDEX).to_numpy(dtype=np.int64)
    folds = members[0].oof.set_index("video_id")["fold"].reindex(first.index).to_numpy()
    # Scored per fold of the first member, like each member's own cv_waf.
    per_fold = []
    for k in np.unique(folds):
        held = folds == k
        t, p = y_true[held], oof_pred[held]
        per_fold.append({"fold": int(k), "waf": waf(t, p), "accuracy": accuracy(t, p)})
    metrics = cv_summary(per_fold, y_true, oof_pred)
    metrics["members_mean_oof_waf"] = float(np.mean([m.metrics["oof_waf"] for m in members]))
    oof = pd.DataFrame({"video_id": first.index, "label": first.to_numpy(), "predicted": names[oof_pred]})

    test_ids = pd.Index(members[0].test["video_id"])
    predictions, probabilities = _stack([m.test for m in members], test_ids)
    test_pred = ensemble_vote(predictions, probabilities)
    test = pd.DataFrame(probabilities.mean(axis=0), columns=PROB_COLUMNS)
    test.insert(0, "video_id", test_ids.to_numpy())
    test.insert(1, "split", members[0].test["split"].to_numpy())
    test.insert(2, "predicted", names[test_pred])
    test.insert(3, "agreement", (predictions == test_pred[:, None]).mean(axis=1))
    return EnsembleResult(oof=oof, test=test, metrics=metrics)


def submission(test: pd.DataFrame, candidates: Sequence[str] | None = None) -> pd.DataFrame:
    """The MER2025 submission: ``name, discrete``, one row per test video.

    ``candidates``: the names that must be predicted (the manifest's test split, i.e. the release's
    ``track_all_candidates.csv``); a submission that misses one, or names another, is an error.
    """
    rows = test[test["split"].eq("test")]
    if rows["video_id"].duplicated().any():
        raise ValueError("the ensemble predicted some test videos twice")
    unpredicted = rows.loc[rows["predicted"].isna(), "video_id"].tolist()
    if unpredicted:
        raise ValueError(f"{len(unpredicted)} test video(s) have no prediction, e.g. {unpredicted[:3]}")
    if candidates is not None:
        missing = sorted(set(candidates) - set(rows["video_id"]))
        extra = sorted(set(rows["video_id"]) - set(candidates))
        if missing or extra:
            raise ValueError(
                f"the submission must cover the {len(set(candidates))} candidates exactly: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} not candidates (e.g. {extra[:3]})"
            )
    return pd.DataFrame({"name": rows["video_id"].to_numpy(), "discrete": rows["predicted"].to_numpy()})
