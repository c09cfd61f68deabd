"""Votes with explicit rules (pure numpy: relabeling and the ensemble both use them).

Votes are class indices in ``[0, num_classes)``; ``-1`` marks a source with no opinion on a sample
(an LLM that gave no valid label, a branch whose features errored). Missing votes are not counted:
"votes cast" below means the sources that gave a class.
"""

from __future__ import annotations

import numpy as np

from ecmf_ray.labels import NUM_CLASSES

MISSING = -1
RULES: tuple[str, ...] = ("majority", "plurality")
TIE_RULES: tuple[str, ...] = ("keep", "probability")


def vote_counts(votes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(samples, sources) class votes -> (samples, classes) counts, ignoring missing votes."""
    votes = np.asarray(votes, dtype=np.int64)
    if votes.ndim != 2:
        raise ValueError(f"votes must be (samples, sources), got shape {votes.shape}")
    if ((votes < MISSING) | (votes >= num_classes)).any():
        raise ValueError(f"votes must be class indices in [0, {num_classes}) or {MISSING}")
    counts = np.zeros((votes.shape[0], num_classes), dtype=np.int64)
    rows, cols = np.nonzero(votes != MISSING)
    np.add.at(counts, (rows, votes[rows, cols]), 1)
    return counts


def majority_winner(counts: np.ndarray) -> np.ndarray:
    """Per sample, the class with more than half of the votes cast; ``MISSING`` where none has."""
    counts = np.asarray(counts, dtype=np.int64)
    cast = counts.sum(axis=1)
    top = counts.max(axis=1)
    return np.where((2 * top > cast) & (cast > 0), counts.argmax(axis=1), MISSING)


def plurality_winner(counts: np.ndarray) -> np.ndarray:
    """Per sample, the class with the most votes if no other class has as many; ``MISSING`` otherwise."""
    counts = np.asarray(counts, dtype=np.int64)
    top = counts.max(axis=1)
    unique_top = (counts == top[:, None]).sum(axis=1) == 1
    return np.where(unique_top & (top > 0), counts.argmax(axis=1), MISSING)


def relabel_vote(
    votes: np.ndarray,
    original: np.ndarray,
    rule: str = "majority",
    min_votes: int = 1,
    tie: str = "keep",
    probabilities: np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
) -> np.ndarray:
    """The refined label per sample under ``rule``; the original label where the rule elects nobody.

    ``majority``: a class needs more than half of the votes cast (ECMF 3.4.1, "majority voting").
    ``plurality``: the most votes suffices; a tie for the most elects nobody (``tie="keep"``) or the tied
    class with the highest mean probability (``tie="probability"``, with ``probabilities``:
    (sources, samples, classes)). Either way the winner also needs at least ``min_votes`` votes.
    """
    if rule not in RULES:
        raise ValueError(f"finalize.relabel.rule must be one of {', '.join(RULES)}, not '{rule}'")
    if tie not in TIE_RULES:
        raise ValueError(f"finalize.relabel.tie must be one of {', '.join(TIE_RULES)}, not '{tie}'")
    votes = np.asarray(votes, dtype=np.int64)
    counts = vote_counts(votes, num_classes)
    if rule == "majority":
        winner = majority_winner(counts)
    elif tie == "keep":
        winner = plurality_winner(counts)
    else:
        if probabilities is None:
            raise ValueError("tie='probability' needs the sources' probabilities")
        winner = np.where((votes == MISSING).all(axis=1), MISSING, ensemble_vote(votes, probabilities))
    return elected(winner, counts, original, min_votes)


def elected(winner: np.ndarray, counts: np.ndarray, original: np.ndarray, min_votes: int) -> np.ndarray:
    """``winner`` where it exists and has at least ``min_votes`` votes, else ``original``."""
    original = np.asarray(original, dtype=np.int64)
    support = np.take_along_axis(counts, np.maximum(winner, 0)[:, None], axis=1)[:, 0]
    return np.where((winner != MISSING) & (support >= min_votes), winner, original)


def all_disagree(votes: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Samples where every source that voted contradicts the original label (the review queue)."""
    votes = np.asarray(votes, dtype=np.int64)
    voted = votes != MISSING
    agrees = (votes == np.asarray(original, dtype=np.int64)[:, None]) & voted
    return voted.any(axis=1) & ~agrees.any(axis=1)


def ensemble_vote(predictions: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The final label over model variants: majority of their predicted classes.

    ``predictions``: (samples, variants) class indices; ``probabilities``: (variants, samples, classes).
    Tie rule: among the classes tied for most votes, the one with the highest mean probability wins.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    counts = vote_counts(predictions, probabilities.shape[-1])
    tied = counts == counts.max(axis=1, keepdims=True)
    mean_prob = probabilities.mean(axis=0)
    return np.where(tied, mean_prob, -np.inf).argmax(axis=1)
