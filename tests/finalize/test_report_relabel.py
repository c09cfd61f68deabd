"""The report's relabeling section: the votes of every source, the audio-visual LLM's included."""

from __future__ import annotations

import pandas as pd

from ecmf_ray.finalize.relabel import refine
from ecmf_ray.finalize.report import source_vote_rows


def test_votes_per_source_with_and_without_truth() -> None:
    original = pd.Series(["happy", "sad", "angry"], index=["a", "b", "c"])
    votes = pd.DataFrame(
        {
            "frame+face": ["happy", "happy", "angry"],
            "audio": ["happy", None, "sad"],
            "av_llm_sim": ["happy", "happy", None],
        },
        index=original.index,
    )
    table = refine(original, votes, min_votes=2)
    rows, header = source_vote_rows(table, None)
    assert header == ["source", "votes", "agree with the original label"]
    assert rows == [("frame+face", 3, 2), ("audio", 2, 1), ("av_llm_sim", 2, 1)]
    truth = pd.Series(["happy", "happy", "angry"], index=["a", "b", "c"])
    rows, header = source_vote_rows(table, truth)
    assert header[-1] == "right (true label)"
    assert rows == [
        ("frame+face", 3, 2, "100.00%"),
        ("audio", 2, 1, "50.00%"),
        ("av_llm_sim", 2, 1, "100.00%"),
    ]
