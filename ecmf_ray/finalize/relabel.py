"""Multi-source relabeling (ECMF 3.4.1): weak unimodal classifiers and the LLM vote on every training label.

Sources: one weak classifier per branch in ``finalize.relabel.branches`` (``model.name=unimodal``, a
full K-fold run on the original labels, so every vote is an out-of-fold prediction), and the LLM's
label from ``ecmf enrich`` when ``finalize.relabel.llm`` is on and enrichment exists.

Vote: the class with the most votes is the refined label, if it has at least
``finalize.relabel.min_votes`` votes (otherwise the original label stays). Tie rule (``finalize.relabel.tie``):
``keep`` (default) keeps the original label when classes tie for the most votes or nobody voted;
``probability`` breaks the tie by the sources' mean probability (an LLM vote counts as probability 1).

Review: a sample whose every vote contradicts its original label goes to ``review_queue.csv``. A
person's decisions, a CSV of ``video_id, label`` given as ``finalize.relabel.reviewed``, override the vote.

Outputs in ``${run_dir}/final/``: ``relabel.parquet`` (video_id, original, refined, votes, changed),
``review_queue.csv`` (video_id, original, votes, refined) and ``relabel_flows.csv`` (how many labels
went from each class to each other class; rows: original, columns: refined).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich import enrichment_path, llm_labels
from ecmf_ray.finalize.experiments import run_variant
from ecmf_ray.finalize.vote import MISSING, all_disagree, ensemble_vote, relabel_vote, vote_counts
from ecmf_ray.labels import EMOTION_INDEX, EMOTIONS, NUM_CLASSES
from ecmf_ray.train.data import labels_of, read_label_table
from ecmf_ray.train.outputs import PROB_COLUMNS

logger = logging.getLogger(__name__)

LLM_SOURCE = "llm"
TIE_RULES = ("keep", "probability")


def check_tie_rule(tie: str) -> None:
    if tie not in TIE_RULES:
        raise ValueError(f"finalize.relabel.tie must be one of {', '.join(TIE_RULES)}, not '{tie}'")


def class_indices(labels: pd.Series) -> np.ndarray:
    """Class names (None / unknown: no vote) as indices, ``MISSING`` where absent."""
    return labels.map(EMOTION_INDEX).fillna(MISSING).to_numpy(dtype=np.int64)


def format_votes(votes: pd.DataFrame) -> list[str]:
    """Each row's votes as ``source:class`` pairs, for people and CSVs (sources without a vote left out)."""
    return [
        ", ".join(f"{source}:{label}" for source, label in row.items() if isinstance(label, str))
        for _, row in votes.iterrows()
    ]


def refine(
    original: pd.Series,
    votes: pd.DataFrame,
    *,
    tie: str = "keep",
    min_votes: int = 1,
    probabilities: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The relabel table from the original labels and every source's vote (both indexed by video_id).

    ``min_votes``: a label changes only to a class with at least this many votes. ``probabilities``: per
    classifier source, its ``(samples, classes)`` probabilities (for tie=probability).
    """
    check_tie_rule(tie)
    votes = votes.reindex(original.index)
    y = class_indices(original)
    v = np.stack([class_indices(votes[c]) for c in votes.columns], axis=1)
    if tie == "keep":
        refined = relabel_vote(v, y)
    else:
        probabilities = probabilities or {}
        # A source without probabilities (the LLM) puts all its mass on its vote.
        one_hot = np.eye(NUM_CLASSES + 1)[v][..., :NUM_CLASSES]  # MISSING (-1) -> the dropped last column
        probs = np.stack([probabilities.get(c, one_hot[:, i]) for i, c in enumerate(votes.columns)], axis=0)
        refined = np.where((v == MISSING).all(axis=1), y, ensemble_vote(v, probs))
    support = np.take_along_axis(vote_counts(v), refined[:, None], axis=1)[:, 0]
    refined = np.where(support >= min_votes, refined, y)
    names = np.array(EMOTIONS, dtype=object)
    return pd.DataFrame(
        {
            "video_id": original.index.astype(str),
            "original": original.to_numpy(dtype=object),
            "refined": names[refined],
            "votes": format_votes(votes),
            "changed": refined != y,
            "review": all_disagree(v, y),
        }
    )


def apply_review(table: pd.DataFrame, decided: pd.Series, source: str) -> pd.DataFrame:
    """A person's decisions (video_id -> class) replace the vote's refined labels."""
    unknown = decided.index.difference(table["video_id"])
    if len(unknown):
        raise ValueError(f"{source}: '{unknown[0]}' is not a labelled training video")
    refined = table["video_id"].map(decided).fillna(table["refined"])
    return table.assign(refined=refined, changed=refined != table["original"])


def flows(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of original -> refined labels (rows: original, columns: refined; the diagonal unchanged)."""
    counts = pd.crosstab(table["original"], table["refined"])
    return counts.reindex(index=list(EMOTIONS), columns=list(EMOTIONS), fill_value=0).rename_axis(
        index="original", columns="refined"
    )


def collect_votes(cfg: DictConfig, original: pd.Series) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every source's vote on the training videos, and the weak classifiers' probabilities."""
    rc = cfg.finalize.relabel
    votes: dict[str, pd.Series] = {}
    probabilities: dict[str, np.ndarray] = {}
    for branch in rc.branches:
        overrides = ["model.name=unimodal", f"model.branches=[{branch}]", *rc.overrides]
        oof = run_variant(cfg, f"weak {branch}", overrides, None).oof.set_index("video_id")
        oof = oof.reindex(original.index)
        votes[branch] = oof["predicted"]
        probabilities[branch] = oof[PROB_COLUMNS].fillna(0.0).to_numpy()
    if rc.llm and storage.exists(enrichment_path(cfg.run_dir)):
        votes[LLM_SOURCE] = llm_labels(cfg.run_dir).reindex(original.index)
    if not votes:
        raise ValueError("relabeling has no sources: set finalize.relabel.branches (or run `ecmf enrich`)")
    return pd.DataFrame(votes, index=original.index), probabilities


def run_relabel(cfg: DictConfig, out_dir: str) -> pd.DataFrame:
    """Vote on every training label and write the relabel outputs; returns the relabel table."""
    rc = cfg.finalize.relabel
    manifest = read_manifest(manifest_path(cfg.run_dir))
    train = manifest[labels_of(manifest) >= 0]
    original = pd.Series(train["label"].to_numpy(dtype=object), index=train["video_id"].astype(str))
    votes, probabilities = collect_votes(cfg, original)
    table = refine(original, votes, tie=str(rc.tie), min_votes=int(rc.min_votes), probabilities=probabilities)
    if rc.reviewed:
        table = apply_review(table, read_label_table(str(rc.reviewed)), str(rc.reviewed))
    storage.write_table(table.drop(columns="review"), storage.join(out_dir, "relabel.parquet"))
    queue = table.loc[table["review"], ["video_id", "original", "votes", "refined"]]
    storage.write_csv(queue, storage.join(out_dir, "review_queue.csv"))
    storage.write_text(storage.join(out_dir, "relabel_flows.csv"), flows(table).to_csv())
    logger.info(
        "relabel: %d of %d labels changed, %d for review (sources: %s)",
        int(table["changed"].sum()), len(table), len(queue), ", ".join(votes.columns),
    )  # fmt: skip
    return table
