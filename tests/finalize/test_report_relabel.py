"""The report's relabeling section: the votes of every source, the audio-visual LLM's included."""

from __future__ import annotations

import pandas as pd

from ecmf_ray.finalize.relabel import apply_review, flows, refine
from ecmf_ray.finalize.report import relabel_section, source_vote_rows
from ecmf_ray.labels import EXCLUDED


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


def test_the_relabel_section_counts_the_clips_a_person_left_out(tmp_path) -> None:
    original = pd.Series(["happy", "sad", "angry"], index=["a", "b", "c"])
    votes = pd.DataFrame(
        {"audio": ["happy", "happy", "sad"], "text": ["happy", "happy", "sad"]}, index=original.index
    )
    table = apply_review(refine(original, votes), pd.Series([EXCLUDED], index=["c"]), "reviewed.csv")
    lines = relabel_section(str(tmp_path), table, flows(table), None)
    text = "\n".join(lines)
    assert f"Clips a person marked {EXCLUDED} in review: 1, left out of every model" in text
    assert f"| angry | {EXCLUDED} | 1 |" in text
    assert (tmp_path / "relabel_flows.png").read_bytes()[:4] == b"\x89PNG"
