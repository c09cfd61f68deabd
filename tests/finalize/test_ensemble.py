"""Ensemble vote, submission, variant configs and experiment names (no Ray)."""

import numpy as np
import pandas as pd
import pytest
from fake_features import small_config, write_fake_run

from ecmf_ray.finalize.ensemble import Variant, ablation_variants, ensemble_variants, submission, vote
from ecmf_ray.finalize.experiments import Experiment, experiment_name, with_labels, with_overrides
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.train.metrics import cv_summary
from ecmf_ray.train.outputs import PROB_COLUMNS


def fake_member(name: str, truth: np.ndarray, test_truth: np.ndarray, error: float, seed: int) -> Experiment:
    """Outputs of a member whose predictions are the truth with independent errors."""
    rng = np.random.default_rng(seed)

    def predictions(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wrong = rng.random(len(y)) < error
        pred = np.where(wrong, (y + rng.integers(1, 6, len(y))) % 6, y)
        probs = rng.dirichlet(np.ones(6), len(y)) * 0.5
        probs[np.arange(len(y)), pred] += 0.5
        return pred, probs

    names = np.array(EMOTIONS, dtype=object)
    pred, probs = predictions(truth)
    folds = np.arange(len(truth)) % 3
    oof = pd.DataFrame(probs, columns=PROB_COLUMNS)
    oof.insert(0, "video_id", [f"tr{i}" for i in range(len(truth))])
    oof.insert(1, "fold", folds)
    oof = oof.assign(predicted=names[pred], label=names[truth])
    per_fold = [
        {"fold": k, "waf": float((pred == truth)[folds == k].mean()), "accuracy": 0.0} for k in range(3)
    ]
    test_pred, test_probs = predictions(test_truth)
    test = pd.DataFrame(test_probs, columns=PROB_COLUMNS)
    test.insert(0, "video_id", [f"te{i}" for i in range(len(test_truth))])
    test.insert(1, "split", ["test"] * (len(test_truth) - 5) + ["unlabeled"] * 5)
    test["predicted"] = names[test_pred]
    return Experiment(name, f"/x/{name}", cv_summary(per_fold, truth, pred), oof, test)


def test_vote_beats_the_mean_member_and_submission_has_one_row_per_test_video():
    rng = np.random.default_rng(0)
    truth, test_truth = rng.integers(0, 6, 300), rng.integers(0, 6, 40)
    members = [fake_member(f"m{i}", truth, test_truth, error=0.35, seed=i) for i in range(5)]
    result = vote(members)
    assert result.metrics["oof_waf"] >= result.metrics["members_mean_oof_waf"] + 0.05
    assert result.oof["label"].tolist() == [EMOTIONS[t] for t in truth]
    assert np.allclose(result.test[PROB_COLUMNS].sum(axis=1), 1.0)
    sub = submission(result.test)
    assert list(sub.columns) == ["name", "discrete"]
    assert sorted(sub["name"]) == sorted(f"te{i}" for i in range(35))
    assert set(sub["discrete"]) <= set(EMOTIONS)

    other = fake_member("other", (truth + 1) % 6, test_truth, error=0.3, seed=9)
    with pytest.raises(ValueError, match="other labels"):
        vote([members[0], other])


def test_variant_lists():
    rows = ablation_variants(
        [
            {"row": "Baseline", "labels": "original", "overrides": ["model.name=mer_attention"]},
            {"row": "+ relabel", "labels": "refined"},
            {"row": "+ ECMF", "overrides": ["model.name=ecmf"]},
        ],
        "refined",
    )
    assert rows[-1] == Variant("+ ECMF", ("model.name=mer_attention", "model.name=ecmf"), "refined")
    assert rows[0].labels == "original"
    assert ensemble_variants([{"name": "a"}, {"name": "b", "overrides": ["seed=1"]}], "refined")[
        1
    ].overrides == ("seed=1",)
    with pytest.raises(ValueError, match="distinct"):
        ensemble_variants([{"name": "a"}, {"name": "a"}], "refined")
    with pytest.raises(ValueError, match="labels"):
        ablation_variants([{"row": "x", "labels": "gold"}], "refined")
    with pytest.raises(ValueError, match="unknown key"):
        ensemble_variants([{"name": "a", "override": []}], "refined")


def test_experiment_names_follow_config_and_label_content(tmp_path):
    write_fake_run(str(tmp_path), n_train=12, n_test=2)  # names hash the run's data too
    cfg = small_config(str(tmp_path))
    refined = with_labels(cfg, pd.Series(["happy"], index=["v"]))
    name = experiment_name(refined)
    table = pd.read_parquet(refined.train.labels)
    assert table.to_dict("list") == {"video_id": ["v"], "label": ["happy"]}
    assert experiment_name(with_overrides(refined, ["train.experiment=other"], "t")) == name
    # An ablation row that ends at the same config as an ensemble member shares its run.
    back = with_overrides(refined, ["model.name=mer_attention", f"model.name={cfg.model.name}"], "t")
    assert experiment_name(back) == name
    assert experiment_name(cfg) != name and with_labels(cfg, None) is cfg
    assert experiment_name(with_labels(cfg, pd.Series(["sad"], index=["v"]))) != name
    assert experiment_name(with_overrides(refined, ["seed=1"], "t")) != name
    # The same labels in another file: the same experiment.
    copy = tmp_path / "copy.csv"
    table.to_csv(copy, index=False)
    assert experiment_name(with_overrides(cfg, [f"train.labels={copy}"], "t")) == name
    with pytest.raises(ValueError, match="unknown config key"):
        with_overrides(cfg, ["model.no_such_key=1"], "variant 'x'")


def test_bad_variants_fail_before_anything_trains(tmp_path):
    from ecmf_ray.finalize.job import plan_variants

    cfg = small_config(str(tmp_path))
    members, rows = plan_variants(cfg)
    assert [v.name for v in members][0] == "ecmf" and rows[0].labels == "original"
    for bad, match in [
        ("finalize.ensemble=[{name: a, overrides: [model.hiden=3]}]", "unknown config key"),
        ("finalize.ablation=[{row: a, overrides: [model.name=gru]}]", "model.name"),
        ("finalize.relabel.tie=coin", "tie"),
    ]:
        with pytest.raises(ValueError, match=match):
            plan_variants(small_config(str(tmp_path), bad))


def test_pseudo_labels_need_unanimity_and_confidence():
    from ecmf_ray.finalize.pseudo import select_pseudo_labels

    probs = np.full((3, 6), 0.01)
    probs[:, 2] = 0.95
    probs[2, 2] = 0.5
    test = pd.DataFrame(probs, columns=PROB_COLUMNS).assign(
        video_id=["a", "b", "c"], predicted="happy", agreement=[1.0, 2 / 3, 1.0]
    )
    assert select_pseudo_labels(test, 0.9).to_dict() == {"a": "happy"}


def test_base_ablation_changes_one_thing_per_row_and_ends_at_the_ecmf_member(tmp_path):
    """configs/base.yaml's finalize.ablation, as the paper's Table 1: each row after the Baseline changes one
    thing (its labels, or one key), and the last row is the ensemble's ecmf member (one shared run)."""
    from ecmf_ray.config import load_config
    from ecmf_ray.finalize.job import plan_variants

    write_fake_run(str(tmp_path), n_train=12, n_test=2)  # names hash the run's data too
    cfg = load_config([], [f"run_dir={tmp_path}"])
    members, rows = plan_variants(cfg)
    entries = list(cfg.finalize.ablation)
    assert [r.name for r in rows][:2] == ["Baseline", "+ Multi-source labeling strategy"]
    for entry in entries[1:]:
        changes = list(entry.get("overrides") or []) + ([entry["labels"]] if entry.get("labels") else [])
        assert len(changes) == 1, entry["row"]
    last, ecmf = rows[-1], members[0]
    assert (last.labels, ecmf.name) == (ecmf.labels, "ecmf")
    final = with_overrides(cfg, last.overrides, "t")
    assert experiment_name(final) == experiment_name(with_overrides(cfg, ecmf.overrides, "t"))
    baseline = with_overrides(cfg, rows[0].overrides, "t")
    assert baseline.model.name == final.model.name == "ecmf"  # the fusion stays; only its parts switch
    assert (baseline.model.modality_token, final.model.modality_token) == ("none", "prepend")
