import numpy as np
import pytest

from ecmf_ray.finalize.vote import all_disagree, ensemble_vote, relabel_vote, vote_counts


def test_vote_counts_ignore_missing():
    counts = vote_counts(np.array([[0, 0, 2], [-1, -1, -1], [5, -1, 5]]))
    assert counts.tolist() == [[2, 0, 1, 0, 0, 0], [0] * 6, [0, 0, 0, 0, 0, 2]]
    with pytest.raises(ValueError, match="class indices"):
        vote_counts(np.array([[6]]))


def test_relabel_majority_and_tie_keeps_original():
    votes = np.array(
        [
            [2, 2, 1],  # clear majority for 2
            [1, 2, -1],  # tie between 1 and 2 -> original
            [-1, -1, -1],  # nobody voted -> original
            [3, 3, 3],  # unanimous and agrees with the original
        ]
    )
    original = np.array([0, 4, 5, 3])
    assert relabel_vote(votes, original).tolist() == [2, 4, 5, 3]


def test_review_queue_is_total_disagreement():
    votes = np.array([[2, 2, 1], [0, 2, 1], [-1, -1, -1], [1, -1, -1]])
    original = np.array([0, 0, 3, 2])
    assert all_disagree(votes, original).tolist() == [True, False, False, True]


def test_ensemble_majority_with_probability_tie_break():
    predictions = np.array([[1, 1, 2], [0, 3, -1]])
    probabilities = np.zeros((3, 2, 6))
    probabilities[:, 1, 3] = 0.6  # sample 1: classes 0 and 3 tied on votes; 3 has the higher mean prob
    probabilities[:, 1, 0] = 0.3
    assert ensemble_vote(predictions, probabilities).tolist() == [1, 3]
