"""Relabeling: each rule on hand-made votes, the LLM voters chosen from the enrich sources, and on a
noisy synthetic feature run the rates of fixed, queued and damaged labels."""

import logging

import numpy as np
import pandas as pd
import pytest
from fake_features import small_config
from noisy_run import write_noisy_run
from omegaconf import OmegaConf

from ecmf_ray.enrich.table import enrichment_path, write_enrichment
from ecmf_ray.finalize.relabel import apply_review, classifier_groups, flows, llm_voters, parse_votes, refine
from ecmf_ray.labels import EMOTIONS, EXCLUDED
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.loop import cross_validate, set_torch_threads

IDS = ["a", "b", "c", "d", "e"]
ORIGINAL = pd.Series(["neutral", "angry", "happy", "sad", "sad"], index=IDS)
VOTES = pd.DataFrame(
    {
        "visual": ["happy", "happy", "sad", None, "angry"],
        "audio": ["happy", "sad", None, None, "angry"],
        "av_llm": ["neutral", None, None, "worried", None],
    },
    index=IDS,
)


def test_majority_with_unanimous_disagreement_sent_to_review():
    table = refine(ORIGINAL, VOTES, rule="majority", min_votes=2)
    assert table["refined"].tolist() == [
        "happy",  # 2 of 3 votes cast; av_llm agrees with the original, so no review
        "angry",  # happy:1, sad:1: no majority
        "happy",  # sad:1 < min_votes
        "sad",  # worried:1 < min_votes
        "sad",  # angry 2 of 2, but every vote contradicts the original: a person decides, the label stays
    ]
    assert table["changed"].tolist() == [True, False, False, False, False]
    assert table["review"].tolist() == [False, True, True, True, True]
    assert table.loc[0, "votes"] == "visual:happy, audio:happy, av_llm:neutral"
    assert table.loc[3, "votes"] == "av_llm:worried"
    assert parse_votes(table["votes"]).loc[3].to_dict() == {
        "visual": None,
        "audio": None,
        "av_llm": "worried",
    }


def test_auto_lets_the_vote_decide_unanimous_disagreement():
    table = refine(ORIGINAL, VOTES, rule="majority", min_votes=2, unanimous_disagreement="auto")
    assert table["refined"].tolist() == ["happy", "angry", "happy", "sad", "angry"]
    assert table["review"].tolist() == [False, True, True, True, True]  # still listed for a person
    one_vote = refine(ORIGINAL, VOTES, min_votes=1, unanimous_disagreement="auto")["refined"].tolist()
    assert one_vote[2:4] == ["sad", "worried"]


def test_majority_and_plurality_differ_on_a_split_vote():
    original = pd.Series(["neutral"], index=["a"])
    votes = pd.DataFrame(
        {"visual": ["happy"], "audio": ["happy"], "text": ["sad"], "av_llm": ["neutral"]}, index=["a"]
    )
    assert refine(original, votes, rule="majority", min_votes=2)["refined"].tolist() == ["neutral"]  # 2 of 4
    assert refine(original, votes, rule="plurality", min_votes=2)["refined"].tolist() == ["happy"]


def test_plurality_tie_rules():
    original = pd.Series(["neutral"], index=["a"])
    votes = pd.DataFrame({"audio": ["happy"], "text": ["sad"]}, index=["a"])
    probs = {"audio": np.eye(6)[[2]] * 0.6, "text": np.eye(6)[[3]] * 0.9}
    auto = {"rule": "plurality", "min_votes": 1, "unanimous_disagreement": "auto"}
    assert refine(original, votes, **auto)["refined"].tolist() == ["neutral"]
    assert refine(original, votes, tie="probability", probabilities=probs, **auto)["refined"].tolist() == [
        "sad"
    ]
    with pytest.raises(ValueError, match="finalize.relabel.tie"):
        refine(original, votes, tie="coin")
    with pytest.raises(ValueError, match="finalize.relabel.rule"):
        refine(original, votes, rule="unanimity")
    with pytest.raises(ValueError, match="finalize.relabel.unanimous_disagreement"):
        refine(original, votes, unanimous_disagreement="ignore")


def test_classifier_groups():
    assert classifier_groups([["frame", "face"], ["audio"], "text"]) == [
        ["frame", "face"],
        ["audio"],
        ["text"],
    ]
    with pytest.raises(ValueError, match="empty group"):
        classifier_groups([[]])


def test_review_decisions_and_flows():
    table = refine(
        pd.Series(["neutral", "angry"], index=["a", "b"]),
        pd.DataFrame({"audio": ["happy", "happy"], "text": ["happy", "happy"]}, index=["a", "b"]),
    )
    assert table["refined"].tolist() == ["neutral", "angry"]  # both unanimous disagreements: kept
    reviewed = apply_review(table, pd.Series(["happy", "angry"], index=["a", "b"]), "reviewed.csv")
    assert reviewed["refined"].tolist() == ["happy", "angry"]
    assert reviewed["changed"].tolist() == [True, False]
    counts = flows(reviewed)
    assert counts.loc["neutral", "happy"] == 1 and counts.loc["angry", "angry"] == 1
    assert counts.to_numpy().sum() == 2 and list(counts.columns) == [*EMOTIONS, EXCLUDED]
    # A clip a person marks unusable is left out: no class, not a change, counted in its own column.
    left_out = apply_review(table, pd.Series(["happy", EXCLUDED], index=["a", "b"]), "reviewed.csv")
    assert left_out["refined"].tolist() == ["happy", EXCLUDED]
    assert left_out["changed"].tolist() == [True, False]
    assert flows(left_out).loc["angry", EXCLUDED] == 1 and flows(left_out).to_numpy().sum() == 2
    with pytest.raises(ValueError, match="reviewed.csv: 'z' is not a labelled training video"):
        apply_review(table, pd.Series(["angry"], index=["z"]), "reviewed.csv")


TWO_SOURCES = (
    "enrich.sources=[{name: text_llm, fields: [label, keywords]},"
    " {name: av_llm, media: [frames, audio], fields: [label, description]}]"
)


def test_llm_voters_default_to_the_audio_visual_sources(tmp_path, caplog):
    run_dir = str(tmp_path)
    cfg = small_config(run_dir, "enrich.enabled=true", TWO_SOURCES)
    assert llm_voters(cfg) == []  # no enrichment yet
    with pytest.raises(ValueError, match="ecmf enrich"):
        llm_voters(small_config(run_dir, TWO_SOURCES, "finalize.relabel.llm_sources=[av_llm]"))
    rows = [{"video_id": "a", "source": s, "label": "happy"} for s in ("text_llm", "av_llm")]
    write_enrichment(pd.DataFrame(rows), enrichment_path(run_dir))

    assert llm_voters(cfg) == ["av_llm"]
    assert llm_voters(small_config(run_dir, TWO_SOURCES, "finalize.relabel.llm_sources=[]")) == []
    # Both labels are in the text features (the default template has every source's): they may vote, but
    # the log says they count twice.
    with caplog.at_level(logging.WARNING):
        both = small_config(
            run_dir, "enrich.enabled=true", TWO_SOURCES, "finalize.relabel.llm_sources=[text_llm,av_llm]"
        )
        assert llm_voters(both) == ["text_llm", "av_llm"]
    assert "['av_llm', 'text_llm']" in caplog.text and "counts twice" in caplog.text
    with pytest.raises(ValueError, match="'gpt' is not an enrich source"):
        llm_voters(small_config(run_dir, TWO_SOURCES, "finalize.relabel.llm_sources=[gpt]"))
    no_label = TWO_SOURCES.replace("fields: [label, keywords]", "fields: [keywords]")
    with pytest.raises(ValueError, match="gives no label"):
        llm_voters(small_config(run_dir, no_label, "finalize.relabel.llm_sources=[text_llm]"))
    # One unnamed text source (no enrich.sources): no LLM votes unless named.
    assert llm_voters(small_config(run_dir)) == []


def oof_votes(run_dir: str, group: list[str]) -> pd.Series:
    """A weak classifier's out-of-fold predictions, trained in this process (no Ray), as finalize trains
    it: unimodal on one branch, concat_mlp over a group of several."""
    cfg = small_config(run_dir)
    data = load_feature_set(run_dir, group, 3, 0)
    name = "unimodal" if len(group) == 1 else str(cfg.finalize.relabel.group_model)
    model = {**OmegaConf.to_container(cfg.model), "name": name, "branches": group}
    predicted = np.empty(len(data.video_ids), dtype=object)
    for run in cross_validate(data, model, OmegaConf.to_container(cfg.train), 0):
        run.use_best()
        predicted[run.val_rows] = np.array(EMOTIONS)[run.predict(run.val_rows).argmax(axis=1)]
    rows = data.labels >= 0
    return pd.Series(predicted[rows], index=data.video_ids[rows])


@pytest.fixture(scope="module")
def trained_votes(tmp_path_factory):
    """The paper's sources on a noisy run: one weak classifier per modality (frame+face one visual
    classifier), and a simulated audio-visual LLM that is right 85% of the time."""
    set_torch_threads(1)
    run_dir = str(tmp_path_factory.mktemp("noisy"))
    truth = write_noisy_run(run_dir, noise=0.2, n_train=240, n_test=12, p_informative=0.8, separation=5.0)
    cfg = small_config(run_dir)
    groups = classifier_groups(cfg.finalize.relabel.classifiers)
    assert groups == [["frame", "face"], ["audio"], ["text"]]
    votes = pd.DataFrame({"+".join(g): oof_votes(run_dir, g) for g in groups})
    manifest = pd.read_parquet(f"{run_dir}/manifest.parquet")
    train = manifest[manifest["split"].eq("train")]
    original = pd.Series(train["label"].to_numpy(), index=train["video_id"].to_numpy())
    true = truth.reindex(original.index)
    rng = np.random.default_rng(7)
    wrong = rng.random(len(true)) < 0.15
    av = np.where(wrong, [EMOTIONS[(EMOTIONS.index(t) + 1) % 6] for t in true], true)
    votes["av_llm"] = pd.Series(av, index=true.index, dtype=object)
    return original, votes, true


def test_paper_rule_on_a_trained_run(trained_votes):
    original, votes, true = trained_votes
    rc = small_config("unused").finalize.relabel
    assert (rc.rule, rc.unanimous_disagreement) == ("majority", "review")
    table = refine(original, votes, rule=rc.rule, min_votes=rc.min_votes).set_index("video_id")
    noisy = table["original"] != true
    assert noisy.sum() == 48
    # A noisy label is contradicted by every good source: it goes to a person, keeping its label for now;
    # where one source happens to agree with it, the majority of the others fixes it.
    queued, fixed = table["review"][noisy], (table["refined"] == true)[noisy]
    assert queued.mean() >= 0.6 and (queued | fixed).mean() >= 0.85, (queued.mean(), fixed.mean())
    assert not table.loc[table["review"], "changed"].any()
    # Clean labels are rarely changed or queued.
    assert table["changed"][~noisy].mean() <= 0.05
    assert table["review"][~noisy].mean() <= 0.1
    assert table["votes"].str.contains("av_llm:").all()


def test_auto_rule_on_a_trained_run_fixes_most_noisy_labels(trained_votes):
    original, votes, true = trained_votes
    for sources in (votes.drop(columns="av_llm"), votes):
        table = refine(original, sources, rule="majority", min_votes=2, unanimous_disagreement="auto")
        table = table.set_index("video_id")
        noisy = table["original"] != true
        fixed = (table["refined"] == true)[noisy].mean()
        assert fixed >= 0.7, f"only {fixed:.0%} of noisy labels fixed by {list(sources.columns)}"
        assert table["changed"][~noisy].mean() <= 0.05
