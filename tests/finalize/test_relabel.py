"""Relabeling: the vote's rules, and on a noisy synthetic dataset the rates of fixed and damaged labels."""

import numpy as np
import pandas as pd
import pytest
from fake_features import small_config
from noisy_run import write_noisy_run
from omegaconf import OmegaConf

from ecmf_ray.finalize.relabel import apply_review, flows, refine
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.loop import cross_validate, set_torch_threads

IDS = ["a", "b", "c", "d", "e"]


def test_refine_majority_ties_min_votes_and_review():
    original = pd.Series(["neutral", "angry", "happy", "sad", "sad"], index=IDS)
    votes = pd.DataFrame(
        {
            "audio": ["happy", "happy", "sad", None, "angry"],
            "text": ["happy", "sad", None, None, "angry"],
            "llm": ["neutral", None, None, "worried", None],
        },
        index=IDS,
    )
    table = refine(original, votes, min_votes=2)
    assert table["refined"].tolist() == [
        "happy",  # 2 of 3 sources
        "angry",  # happy:1, sad:1 tie -> original kept
        "happy",  # sad:1 < min_votes -> original
        "sad",  # worried:1 < min_votes
        "angry",  # 2 votes, all against the original
    ]
    assert table["changed"].tolist() == [True, False, False, False, True]
    assert table["review"].tolist() == [False, True, True, True, True]
    assert table.loc[0, "votes"] == "audio:happy, text:happy, llm:neutral"
    assert table.loc[3, "votes"] == "llm:worried"
    assert refine(original, votes, min_votes=1)["refined"].tolist()[2:4] == ["sad", "worried"]


def test_probability_tie_rule():
    original = pd.Series(["neutral"], index=["a"])
    votes = pd.DataFrame({"audio": ["happy"], "text": ["sad"]}, index=["a"])
    probs = {"audio": np.eye(6)[[2]] * 0.6, "text": np.eye(6)[[3]] * 0.9}
    assert refine(original, votes, min_votes=1)["refined"].tolist() == ["neutral"]
    assert refine(original, votes, tie="probability", min_votes=1, probabilities=probs)[
        "refined"
    ].tolist() == ["sad"]
    with pytest.raises(ValueError, match="tie"):
        refine(original, votes, tie="coin")


def test_review_decisions_and_flows():
    table = refine(
        pd.Series(["neutral", "angry"], index=["a", "b"]),
        pd.DataFrame({"audio": ["happy", "happy"], "text": ["happy", "happy"]}, index=["a", "b"]),
    )
    reviewed = apply_review(table, pd.Series(["angry"], index=["b"]), "reviewed.csv")
    assert reviewed["refined"].tolist() == ["happy", "angry"]
    assert reviewed["changed"].tolist() == [True, False]
    counts = flows(reviewed)
    assert counts.loc["neutral", "happy"] == 1 and counts.loc["angry", "angry"] == 1
    assert counts.to_numpy().sum() == 2 and list(counts.columns) == list(EMOTIONS)
    with pytest.raises(ValueError, match="reviewed.csv: 'z' is not a labelled training video"):
        apply_review(table, pd.Series(["angry"], index=["z"]), "reviewed.csv")


def oof_votes(run_dir: str, branch: str) -> pd.Series:
    """A weak unimodal classifier's out-of-fold predictions, trained in this process (no Ray)."""
    cfg = small_config(run_dir)
    data = load_feature_set(run_dir, [branch], 3, 0)
    model = {**OmegaConf.to_container(cfg.model), "name": "unimodal", "branches": [branch]}
    predicted = np.empty(len(data.video_ids), dtype=object)
    for run in cross_validate(data, model, OmegaConf.to_container(cfg.train), 0):
        run.use_best()
        predicted[run.val_rows] = np.array(EMOTIONS)[run.predict(run.val_rows).argmax(axis=1)]
    rows = data.labels >= 0
    return pd.Series(predicted[rows], index=data.video_ids[rows])


def test_relabeling_fixes_most_noisy_labels_and_few_clean_ones(tmp_path):
    set_torch_threads(1)
    run_dir = str(tmp_path)
    truth = write_noisy_run(run_dir, noise=0.2, n_train=240, n_test=12, p_informative=0.8, separation=5.0)
    votes = pd.DataFrame({b: oof_votes(run_dir, b) for b in ("frame", "face", "audio", "text")})
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    train = manifest[manifest["split"].eq("train")]
    original = pd.Series(train["label"].to_numpy(), index=train["video_id"].to_numpy())
    table = refine(original, votes, min_votes=2).set_index("video_id")
    true = truth.reindex(table.index)
    noisy = table["original"] != true
    fixed = (table["refined"] == true)[noisy].mean()
    clean_changed = table["changed"][~noisy].mean()
    assert noisy.sum() == 48
    assert fixed >= 0.7, f"only {fixed:.0%} of noisy labels fixed"
    assert clean_changed <= 0.05, f"{clean_changed:.0%} of clean labels changed"
