"""What the review page shows: the run's review queue (and an optional audit sample), clip by clip.

Read from a finished ``finalize`` (``${run_dir}/final/``): ``review_queue.csv`` (the clips whose every
vote contradicts the original label), ``relabel.parquet`` (the audit sample: clips the vote relabelled),
``ensemble_oof.parquet`` / ``ensemble_test.parquet`` (the ensemble's prediction), the weak classifiers'
out-of-fold probabilities (their experiments, found by config as finalize finds them), the manifest
(video and transcript) and ``enrich/enrichment.parquet`` (the LLM sources' text). Bad input never stops
the page: each problem becomes a message (also logged) and the rest stays usable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich import enrichment_path, read_enrichment
from ecmf_ray.finalize.experiments import find_experiment, with_overrides
from ecmf_ray.finalize.relabel import parse_votes, weak_classifiers
from ecmf_ray.review.decisions import reviewed_path
from ecmf_ray.train.outputs import PROB_COLUMNS

logger = logging.getLogger(__name__)

ENRICHED_FIELDS = ("label", "keywords", "description")


@dataclass
class Review:
    """The page's data: clips in order, page-level problems, and the command that applies the decisions."""

    items: list[dict[str, Any]]
    problems: list[str]
    rerun: str
    videos: dict[str, str] = field(default_factory=dict)  # video_id -> video URI, for the clips that have one


def final_file(run_dir: str, name: str) -> str:
    return storage.join(run_dir, "final", name)


def rerun_command(run_dir: str) -> str:
    """The command that reruns finalize with the decisions (the run's saved ``review`` config, when local)."""
    config = storage.join(run_dir, "config", "review.yaml")
    given = f"--config {config}" if not storage.is_remote(run_dir) else f"--config … run_dir={run_dir}"
    return f"ecmf finalize {given} finalize.relabel.reviewed={reviewed_path(run_dir)}"


def weak_probabilities(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """Per weak classifier (named as in the vote), its out-of-fold probabilities by video_id.

    Found as finalize finds a finished experiment; a classifier not found (another config) is left out.
    """
    found = {}
    for request in weak_classifiers(cfg.finalize.relabel):
        try:
            exp_dir = find_experiment(with_overrides(cfg, request.overrides, request.name))
        except Exception as err:  # e.g. no features/ under this run_dir: the votes still show
            logger.warning("review: cannot look up %s: %s", request.name, err)
            exp_dir = None
        name = request.name.removeprefix("weak ")
        if exp_dir is None:
            logger.warning(
                "review: no finished experiment for %s: its votes show no probability", request.name
            )
            continue
        found[name] = (
            storage.read_table(storage.join(exp_dir, "oof.parquet")).to_pandas().set_index("video_id")
        )
    return found


def ensemble_predictions(run_dir: str) -> pd.Series:
    """video_id -> the ensemble's label: out-of-fold for training clips, else its test prediction."""
    parts = []
    for name in ("ensemble_oof.parquet", "ensemble_test.parquet"):
        uri = final_file(run_dir, name)
        if storage.exists(uri):
            parts.append(storage.read_table(uri).to_pandas().set_index("video_id")["predicted"])
    if not parts:
        return pd.Series(dtype=object)
    both = pd.concat(parts)
    return both[~both.index.duplicated()]


def enriched(run_dir: str) -> dict[str, list[dict[str, str]]]:
    """video_id -> each LLM source's label, keywords and description (empty without ``ecmf enrich``)."""
    if not storage.exists(enrichment_path(run_dir)):
        return {}
    out: dict[str, list[dict[str, str]]] = {}
    for row in read_enrichment(run_dir).to_dict("records"):
        values = {f: str(row[f]) for f in ENRICHED_FIELDS if row.get(f)}
        if values:
            out.setdefault(str(row["video_id"]), []).append({"source": str(row["source"]), **values})
    return out


def audit_sample(relabel: pd.DataFrame, queued: set[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` clips drawn at random (seeded) from those the vote relabelled, the queue's own left out."""
    changed = relabel[relabel["changed"].astype(bool) & ~relabel["video_id"].isin(queued)]
    picked = np.random.default_rng(seed).permutation(len(changed))[:n]
    return changed.iloc[np.sort(picked)]


def vote_rows(votes: pd.Series, probabilities: dict[str, pd.DataFrame], video_id: str) -> list[dict]:
    """Each source's vote on one clip, with the classifier's probability of that class where it has one."""
    rows = []
    for source, label in votes.items():
        if not isinstance(label, str):
            continue
        probs = probabilities.get(str(source))
        prob = None
        if probs is not None and video_id in probs.index and f"prob_{label}" in PROB_COLUMNS:
            prob = round(float(probs.at[video_id, f"prob_{label}"]), 4)
        rows.append({"source": str(source), "label": label, "probability": prob})
    return rows


def load_review(cfg: DictConfig) -> Review:
    """Everything the page shows for ``cfg.run_dir``; problems are messages, never exceptions."""
    run_dir = str(cfg.run_dir)
    problems: list[str] = []

    def problem(message: str) -> None:
        logger.warning("review: %s", message)
        problems.append(message)

    review = Review(items=[], problems=problems, rerun=rerun_command(run_dir))
    try:
        manifest = read_manifest(manifest_path(run_dir)).set_index("video_id")
    except Exception as err:  # the page still opens and says why it is empty
        problem(str(err))
        return review
    queue_uri = final_file(run_dir, "review_queue.csv")
    if storage.exists(queue_uri):
        with storage.open_file(queue_uri, "rb") as f:
            queue = pd.read_csv(f, dtype=str, keep_default_na=False)
        if queue.empty:
            problem(f"the review queue {queue_uri} is empty: no clip's every vote contradicts its label")
    else:
        problem(f"no review queue at {queue_uri}: run `ecmf finalize` (with finalize.relabel.enabled) first")
        queue = pd.DataFrame(columns=["video_id", "original", "votes", "refined"])
    queue["audit"] = False

    sample = int(cfg.review.sample or 0)
    relabel_uri = final_file(run_dir, "relabel.parquet")
    if sample and storage.exists(relabel_uri):
        relabel = storage.read_table(relabel_uri).to_pandas()
        audit = audit_sample(relabel, set(queue["video_id"]), sample, int(cfg.seed))
        queue = pd.concat([queue, audit[["video_id", "original", "votes", "refined"]].assign(audit=True)])
    elif sample:
        problem(f"review.sample={sample}: no {relabel_uri} to draw relabelled clips from")

    unknown = queue.loc[~queue["video_id"].isin(manifest.index), "video_id"].tolist()
    if unknown:
        problem(
            f"{len(unknown)} queued clip(s) are not in the manifest and are left out: {', '.join(unknown[:5])}"
            + (" …" if len(unknown) > 5 else "")
        )
        queue = queue[queue["video_id"].isin(manifest.index)]

    votes = parse_votes(queue.set_index("video_id")["votes"]) if len(queue) else pd.DataFrame()
    probabilities = weak_probabilities(cfg) if len(queue) else {}
    predicted = ensemble_predictions(run_dir)
    texts = enriched(run_dir)
    for row in queue.to_dict("records"):
        video_id = str(row["video_id"])
        clip = manifest.loc[video_id]
        video = str(clip["video_path"] or "")
        item = {
            "video_id": video_id,
            "original": row["original"],
            "refined": row["refined"],
            "audit": bool(row["audit"]),
            "votes": vote_rows(votes.loc[video_id], probabilities, video_id),
            "ensemble": predicted.get(video_id),
            "text": str(clip["text"] or ""),
            "enriched": texts.get(video_id, []),
            "problem": None,
        }
        if video and storage.exists(video):
            review.videos[video_id] = video
        else:
            item["problem"] = f"video missing: {video or '(no path in the manifest)'}"
            problem(f"{video_id}: {item['problem']}")
        review.items.append(item)
    return review
