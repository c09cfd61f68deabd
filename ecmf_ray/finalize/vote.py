"""Majority votes with explicit tie rules (pure numpy: relabeling and the ensemble both use them).

Votes are class indices in ``[0, num_classes)``; ``-1`` marks a source with no opinion on a sample
(an LLM that gave no valid label, a branch whose features errored).
"""

from __future__ import annotations

import numpy as np

from ecmf_ray.labels import NUM_CLASSES

MISSING = -1


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


def relabel_vote(votes: np.ndarray, original: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The refined label per sample: the strict majority class among the sources.

    Tie rule: when several classes share the top count (or no source voted), the original label is
    kept, so a refined label always has more support than any alternative.
    """
    counts = vote_counts(votes, num_classes)
    original = np.asarray(original, dtype=np.int64)
    top = counts.max(axis=1)
    winners = counts.argmax(axis=1)
    unique_top = (counts == top[:, None]).sum(axis=1) == 1
    return np.where(unique_top & (top > 0), winners, original)


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
