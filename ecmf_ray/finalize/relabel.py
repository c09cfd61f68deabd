"""Multi-source relabeling (ECMF 3.4.1): weak classifiers per modality and an audio-visual LLM vote on
every training label.

Sources (``finalize.relabel``):

- ``classifiers``: voter groups, one weak classifier each, trained K-fold on the original labels (so
  every vote is an out-of-fold prediction). A group of one branch is ``model.name=unimodal``; a group
  of several is one classifier over their concatenation (``group_model``). The default
  ``[[frame, face], [audio], [text]]`` is the paper's one classifier per modality: frame and face are two
  views of the one visual modality and vote once.
- ``llm_sources``: the ``ecmf enrich`` sources whose label votes (their name is the vote's source). The
  default (null) is every source that watches or listens to the clip (``media`` not empty), the
  paper's Qwen-Omni. A text-only LLM's label already reaches the vote through the text features the
  text classifier learns from; naming such a source anyway is allowed and logged as counted twice.

Rule (``rule``, ``min_votes``): ``majority`` (the paper's) elects a class with more than half of the
votes cast; ``plurality`` the class with the most votes, a tie for the most broken by ``tie``
(``keep``: nobody is elected; ``probability``: the highest mean probability, an LLM vote counting as
probability 1). Either way the elected class needs ``min_votes`` votes, else the original label stays.

Review: a sample whose every vote contradicts its original label goes to ``review_queue.csv``. With
``unanimous_disagreement: review`` (the paper's, default) it keeps its original label until a person
decides; with ``auto`` the vote's label applies and the queue is only a list. A person's decisions, a
CSV of ``video_id, label`` given as ``reviewed``, override both; a clip decided ``unusable`` is refined to
:data:`~ecmf_ray.labels.EXCLUDED` and every model trained on the refined labels leaves it out.

Outputs in ``${run_dir}/final/``: ``relabel.parquet`` (video_id, original, refined, votes, changed: the
clip learns another class), ``review_queue.csv`` (video_id, original, votes, refined) and
``relabel_flows.csv`` (how many labels went from each class to each other class, or were left out;
rows: original, columns: refined).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich import enrichment_path, llm_labels
from ecmf_ray.enrich.sources import resolve_sources
from ecmf_ray.enrich.text import text_label_sources
from ecmf_ray.finalize.experiments import Experiment, VariantRequest, run_variants
from ecmf_ray.finalize.vote import MISSING, RULES, TIE_RULES, all_disagree, relabel_vote
from ecmf_ray.labels import EMOTION_INDEX, EMOTIONS, EXCLUDED, LABEL_CHOICES, NUM_CLASSES
from ecmf_ray.review.decisions import reviewed_labels
from ecmf_ray.train.data import labels_of
from ecmf_ray.train.outputs import PROB_COLUMNS

if TYPE_CHECKING:
    from ecmf_ray.train.distributed import SharedFeatures

logger = logging.getLogger(__name__)

DISAGREEMENT_MODES = ("review", "auto")


def check_rules(rule: str, tie: str, unanimous_disagreement: str) -> None:
    """Refuse unknown rule names, naming the config key."""
    given = {"rule": rule, "tie": tie, "unanimous_disagreement": unanimous_disagreement}
    for key, allowed in (("rule", RULES), ("tie", TIE_RULES), ("unanimous_disagreement", DISAGREEMENT_MODES)):
        if str(given[key]) not in allowed:
            raise ValueError(
                f"finalize.relabel.{key} must be one of {', '.join(allowed)}, not '{given[key]}'"
            )


def check_relabel_config(rc: Any) -> None:
    """Check ``finalize.relabel`` before anything trains."""
    check_rules(str(rc.rule), str(rc.tie), str(rc.unanimous_disagreement))
    classifier_groups(rc.classifiers)


def classifier_groups(entries: Sequence[Any]) -> list[list[str]]:
    """``finalize.relabel.classifiers`` as branch groups: ``audio`` and ``[audio]`` both mean one branch."""
    groups = [[str(entry)] if isinstance(entry, str) else [str(b) for b in entry] for entry in entries]
    if any(not g for g in groups):
        raise ValueError("finalize.relabel.classifiers: an empty group has no branch to train on")
    return groups


def class_indices(labels: pd.Series) -> np.ndarray:
    """Class names (None / unknown: no vote) as indices, ``MISSING`` where absent."""
    return labels.map(EMOTION_INDEX).fillna(MISSING).to_numpy(dtype=np.int64)


def format_votes(votes: pd.DataFrame) -> list[str]:
    """Each row's votes as ``source:class`` pairs, for people and CSVs (sources without a vote left out)."""
    return [
        ", ".join(f"{source}:{label}" for source, label in row.items() if isinstance(label, str))
        for _, row in votes.iterrows()
    ]


def parse_votes(formatted: pd.Series) -> pd.DataFrame:
    """The inverse of :func:`format_votes`: one column per source, None where a source gave no vote."""
    rows = [dict(p.split(":", 1) for p in str(text).split(", ") if p) for text in formatted]
    votes = pd.DataFrame(rows, index=formatted.index).astype(object)
    return votes.where(votes.notna(), None)


def refine(
    original: pd.Series,
    votes: pd.DataFrame,
    *,
    rule: str = "majority",
    min_votes: int = 1,
    tie: str = "keep",
    unanimous_disagreement: str = "review",
    probabilities: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The relabel table from the original labels and every source's vote (both indexed by video_id).

    ``probabilities``: per classifier source, its ``(samples, classes)`` probabilities (for
    ``plurality`` with ``tie=probability``). ``review`` marks the samples every vote contradicts.
    """
    check_rules(rule, tie, unanimous_disagreement)
    votes = votes.reindex(original.index)
    y = class_indices(original)
    v = np.stack([class_indices(votes[c]) for c in votes.columns], axis=1)
    probs = None
    if rule == "plurality" and tie == "probability":
        # A source without probabilities (an LLM) puts all its mass on its vote.
        one_hot = np.eye(NUM_CLASSES + 1)[v][..., :NUM_CLASSES]  # MISSING (-1) -> the dropped last column
        given = probabilities or {}
        probs = np.stack([given.get(c, one_hot[:, i]) for i, c in enumerate(votes.columns)], axis=0)
    refined = relabel_vote(v, y, rule, min_votes, tie, probs)
    review = all_disagree(v, y)
    if unanimous_disagreement == "review":
        refined = np.where(review, y, refined)  # a person decides these, not the vote
    names = np.array(EMOTIONS, dtype=object)
    return pd.DataFrame(
        {
            "video_id": original.index.astype(str),
            "original": original.to_numpy(dtype=object),
            "refined": names[refined],
            "votes": format_votes(votes),
            "changed": refined != y,
            "review": review,
        }
    )


def apply_review(table: pd.DataFrame, decided: pd.Series, source: str) -> pd.DataFrame:
    """A person's decisions (video_id -> class, or :data:`~ecmf_ray.labels.EXCLUDED`: left out) replace
    the vote's refined labels."""
    unknown = decided.index.difference(table["video_id"])
    if len(unknown):
        raise ValueError(f"{source}: '{unknown[0]}' is not a labelled training video")
    refined = table["video_id"].map(decided).fillna(table["refined"])
    return table.assign(refined=refined, changed=(refined != table["original"]) & (refined != EXCLUDED))


def flows(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of original -> refined labels (rows: original, columns: refined, the last column the clips
    left out; the diagonal unchanged)."""
    counts = pd.crosstab(table["original"], table["refined"])
    return counts.reindex(index=list(EMOTIONS), columns=list(LABEL_CHOICES), fill_value=0).rename_axis(
        index="original", columns="refined"
    )


def llm_voters(cfg: DictConfig) -> list[str]:
    """The enrich sources whose label votes (see the module docstring for the default)."""
    chosen = cfg.finalize.relabel.llm_sources
    if not storage.exists(enrichment_path(cfg.run_dir)):
        if chosen:
            raise ValueError(
                f"finalize.relabel.llm_sources names {list(chosen)}, but {enrichment_path(cfg.run_dir)} "
                "does not exist (run `ecmf enrich` first)"
            )
        return []
    sources = {s.name: s for s in resolve_sources(cfg.enrich)}
    if chosen is None:
        return [s.name for s in sources.values() if s.media and "label" in s.fields]
    names = [str(n) for n in chosen]
    for name in names:
        if name not in sources:
            raise ValueError(
                f"finalize.relabel.llm_sources: '{name}' is not an enrich source ({', '.join(sources)})"
            )
        if "label" not in sources[name].fields:
            raise ValueError(
                f"finalize.relabel.llm_sources: source '{name}' gives no label (its fields lack label)"
            )
    twice = sorted(set(names) & text_label_sources(cfg.enrich))
    if twice and "text" in cfg.model.branches:
        logger.warning(
            "relabel: the label of %s is in the text features and votes too: it counts twice", twice
        )
    return names


def weak_classifiers(rc: Any) -> list[VariantRequest]:
    """One K-fold experiment per voter group, on the original labels (named ``weak <branches>``)."""
    requests = []
    for group in classifier_groups(rc.classifiers):
        model = "unimodal" if len(group) == 1 else str(rc.group_model)
        overrides = [f"model.name={model}", f"model.branches=[{','.join(group)}]", *rc.overrides]
        requests.append(VariantRequest(f"weak {'+'.join(group)}", overrides))
    return requests


def collect_votes(
    cfg: DictConfig, original: pd.Series, shared: SharedFeatures | None = None
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[Experiment]]:
    """Every source's vote on the training videos, the weak classifiers' probabilities, and their experiments.

    The weak classifiers train together, as finalize's first wave.
    """
    rc = cfg.finalize.relabel
    votes: dict[str, pd.Series] = {}
    probabilities: dict[str, np.ndarray] = {}
    requests = weak_classifiers(rc)
    experiments = run_variants(cfg, requests, shared, "weak")
    for request, experiment in zip(requests, experiments, strict=True):
        name = request.name.removeprefix("weak ")
        oof = experiment.oof.set_index("video_id").reindex(original.index)
        votes[name] = oof["predicted"]
        probabilities[name] = oof[PROB_COLUMNS].fillna(0.0).to_numpy()
    names = llm_voters(cfg)
    if names:
        labels = llm_labels(cfg.run_dir)
        for name in names:
            if name not in labels.columns:
                raise ValueError(
                    f"{enrichment_path(cfg.run_dir)} has no rows from source '{name}' (rerun `ecmf enrich`)"
                )
            votes[name] = labels[name].reindex(original.index)
    if not votes:
        raise ValueError("relabeling has no sources: set finalize.relabel.classifiers (or llm_sources)")
    return pd.DataFrame(votes, index=original.index), probabilities, experiments


def run_relabel(
    cfg: DictConfig, out_dir: str, shared: SharedFeatures | None = None
) -> tuple[pd.DataFrame, list[Experiment]]:
    """Vote on every training label and write the relabel outputs; the relabel table and the weak classifiers."""
    rc = cfg.finalize.relabel
    check_relabel_config(rc)
    manifest = read_manifest(manifest_path(cfg.run_dir))
    train = manifest[labels_of(manifest) >= 0]
    original = pd.Series(train["label"].to_numpy(dtype=object), index=train["video_id"].astype(str))
    votes, probabilities, weak = collect_votes(cfg, original, shared)
    table = refine(
        original,
        votes,
        rule=str(rc.rule),
        min_votes=int(rc.min_votes),
        tie=str(rc.tie),
        unanimous_disagreement=str(rc.unanimous_disagreement),
        probabilities=probabilities,
    )
    if rc.reviewed:
        table = apply_review(table, reviewed_labels(str(rc.reviewed)), str(rc.reviewed))
    storage.write_table(table.drop(columns="review"), storage.join(out_dir, "relabel.parquet"))
    queue = table.loc[table["review"], ["video_id", "original", "votes", "refined"]]
    storage.write_csv(queue, storage.join(out_dir, "review_queue.csv"))
    storage.write_text(storage.join(out_dir, "relabel_flows.csv"), flows(table).to_csv())
    logger.info(
        "relabel: %d of %d labels changed, %d left out, %d for review (rule %s; sources: %s)",
        int(table["changed"].sum()), len(table), int(table["refined"].eq(EXCLUDED).sum()), len(queue),
        rc.rule, ", ".join(votes.columns),
    )  # fmt: skip
    return table, weak
