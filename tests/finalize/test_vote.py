import numpy as np
import pytest

from ecmf_ray.finalize.vote import (
    all_disagree,
    ensemble_vote,
    majority_winner,
    plurality_winner,
    relabel_vote,
    vote_counts,
)


def test_vote_counts_ignore_missing():
    counts = vote_counts(np.array([[0, 0, 2], [-1, -1, -1], [5, -1, 5]]))
    assert counts.tolist() == [[2, 0, 1, 0, 0, 0], [0] * 6, [0, 0, 0, 0, 0, 2]]
    with pytest.raises(ValueError, match="class indices"):
        vote_counts(np.array([[6]]))


VOTES = np.array(
    [
        [2, 2, 1, -1],  # 2 of 3 cast: a majority and a plurality
        [1, 2, -1, -1],  # 1 against 1: nobody
        [-1, -1, -1, -1],  # nobody voted -> original
        [3, 3, 3, 3],  # unanimous and agrees with the original
        [2, 2, 1, 0],  # 2 of 4: the most votes, but not more than half
        [4, -1, -1, -1],  # 1 of 1 cast: a majority of one vote
    ]
)
ORIGINAL = np.array([0, 4, 5, 3, 5, 0])


def test_majority_needs_more_than_half_of_the_votes_cast():
    assert majority_winner(vote_counts(VOTES)).tolist() == [2, -1, -1, 3, -1, 4]
    assert relabel_vote(VOTES, ORIGINAL, "majority").tolist() == [2, 4, 5, 3, 5, 4]
    # min_votes: a one-vote majority is not enough.
    assert relabel_vote(VOTES, ORIGINAL, "majority", min_votes=2).tolist() == [2, 4, 5, 3, 5, 0]


def test_plurality_needs_the_most_votes_and_no_tie():
    assert plurality_winner(vote_counts(VOTES)).tolist() == [2, -1, -1, 3, 2, 4]
    assert relabel_vote(VOTES, ORIGINAL, "plurality").tolist() == [2, 4, 5, 3, 2, 4]
    assert relabel_vote(VOTES, ORIGINAL, "plurality", min_votes=3).tolist() == [0, 4, 5, 3, 5, 0]
    with pytest.raises(ValueError, match="finalize.relabel.rule"):
        relabel_vote(VOTES, ORIGINAL, "unanimity")


def test_plurality_ties_by_probability():
    probabilities = np.zeros((4, len(VOTES), 6))
    probabilities[1, 1, 2] = 0.9  # sample 1: 1 against 2 -> the source voting 2 is surer
    probabilities[0, 1, 1] = 0.6
    assert relabel_vote(VOTES, ORIGINAL, "plurality", tie="probability", probabilities=probabilities).tolist() == [
        2, 2, 5, 3, 2, 4,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="finalize.relabel.tie"):
        relabel_vote(VOTES, ORIGINAL, "plurality", tie="coin")


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
