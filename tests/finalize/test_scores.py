"""The report's scores on hand-built predictions and labels: every column's value is known in advance."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf_ray.finalize.ensemble import EnsembleResult, Variant
from ecmf_ray.finalize.experiments import Experiment
from ecmf_ray.finalize.report import ReportInputs, write_report
from ecmf_ray.finalize.scores import reference_labels, row_scores, score_against, selection, truth_waf
from ecmf_ray.train.metrics import cv_summary

# Original labels of four training videos on two shared folds.
REFERENCE = pd.DataFrame(
    {"video_id": ["v0", "v1", "v2", "v3"], "label": ["happy", "sad", "happy", "sad"], "fold": [0, 0, 1, 1]}
)
# Fold 0 all right (WAF 1); fold 1: happy, sad -> happy, happy: F1 happy 2/3, sad 0, WAF 1/3.
OOF = pd.DataFrame({"video_id": ["v0", "v1", "v2", "v3"], "predicted": ["happy", "sad", "happy", "happy"]})
CV = (1 + 1 / 3) / 2
# Pooled: happy P 2/3 R 1 -> F1 0.8; sad P 1 R 1/2 -> F1 2/3; support 2 and 2.
POOLED = (0.8 + 2 / 3) / 2
# True labels: v3 was really happy (its original label was noise); t0, t1 are test videos.
TRUTH = pd.Series(
    ["happy", "sad", "happy", "happy", "angry", "sad"], index=["v0", "v1", "v2", "v3", "t0", "t1"]
)
TEST = pd.DataFrame({"video_id": ["t0", "t1"], "split": ["test", "test"], "predicted": ["angry", "angry"]})
# t0 angry right, t1 sad -> angry: angry P 1/2 R 1 -> 2/3, sad 0; WAF 1/3.
TEST_WAF = 1 / 3


def test_score_against_original_labels_per_shared_fold_and_pooled():
    score = score_against(OOF, REFERENCE)
    assert score.per_fold == pytest.approx((1.0, 1 / 3))
    assert score.cv == pytest.approx(CV) and score.pooled == pytest.approx(POOLED)
    # Folds come from the reference, not from the predictions (a row trained on its own split).
    assert score_against(OOF.assign(fold=[1, 0, 0, 1]), REFERENCE).per_fold == score.per_fold
    assert score_against(OOF.assign(video_id=["x", "y", "z", "w"]), REFERENCE) is None


def test_truth_and_test_scores():
    assert truth_waf(TEST, TRUTH) == pytest.approx(TEST_WAF)
    assert truth_waf(TEST, None) is None
    assert truth_waf(OOF, TRUTH) == pytest.approx(1.0)  # against the truth the OOF predictions are all right


def test_row_scores_name_each_label_set():
    refined = row_scores(OOF, TEST, 0.9, "refined", REFERENCE, TRUTH, ("inner", 0.95))
    assert refined.original.cv == pytest.approx(CV) and refined.original.pooled == pytest.approx(POOLED)
    assert refined.agreement == 0.9 and refined.learnt == 0.9  # against the vote
    assert refined.fold_selected == 0.95 and refined.select_epoch == "inner"
    assert refined.truth_oof == pytest.approx(1.0) and refined.test == pytest.approx(TEST_WAF)
    original = row_scores(OOF, TEST, CV, "original", REFERENCE, None)
    assert original.agreement is None and original.fold_selected is None
    assert original.truth_oof is None and original.test is None
    # fold selection: the fold-selected figure is the cv_waf itself, so it is not repeated.
    assert row_scores(OOF, TEST, CV, "original", REFERENCE, None, ("fold", CV)).fold_selected is None


def test_selection_reads_each_folds_record():
    inner = {
        "per_fold": [
            {"select_epoch": "inner", "fold_selected_waf": 0.8},
            {"select_epoch": "inner", "fold_selected_waf": 0.6},
        ]
    }
    assert selection(inner) == ("inner", pytest.approx(0.7))
    assert selection({"per_fold": [{"waf": 0.5}]}) == ("fold", None)  # written before select_epoch existed


def test_reference_labels_are_the_manifest_labels_on_the_training_folds(tmp_path):
    from fake_features import write_fake_run

    from ecmf_ray.train.data import load_feature_set

    manifest = write_fake_run(str(tmp_path), n_train=60, n_test=6)
    reference = reference_labels(str(tmp_path), 3, seed=5)
    data = load_feature_set(str(tmp_path), ["audio"], 3, seed=5)
    labelled = data.labels >= 0
    assert reference["video_id"].tolist() == data.video_ids[labelled].tolist()
    assert reference["fold"].tolist() == data.folds[labelled].tolist()
    labels = manifest.set_index("video_id").loc[reference["video_id"], "label"]
    assert reference["label"].tolist() == labels.tolist()


def experiment(
    name: str, oof: pd.DataFrame, learnt: list[str], cv: float, per_fold: list[dict]
) -> Experiment:
    oof = oof.assign(label=learnt)
    metrics = {"cv_waf": {"mean": cv}, "oof_waf": cv, "per_fold": per_fold,
               "per_class_f1": {c: 0.5 for c in ("neutral", "angry", "happy", "sad", "worried", "surprise")}}  # fmt: skip
    return Experiment(name, f"/runs/x/train/{name}", metrics, oof, TEST)


def test_report_names_the_label_set_of_every_waf(tmp_path):
    """The report's tables: original labels on shared folds for every row, agreement only for refined rows."""
    fold = [{"fold": 0, "waf": 1.0, "select_epoch": "fold", "fold_selected_waf": 1.0}]
    inner = [{"fold": 0, "waf": 0.5, "select_epoch": "inner", "fold_selected_waf": 0.75}]
    vote_labels = ["happy", "sad", "happy", "happy"]  # the vote "fixed" v3
    baseline = experiment("base", OOF, REFERENCE["label"].tolist(), CV, fold)
    relabelled = experiment("relabel", OOF, vote_labels, 0.875, inner)
    truth_idx = np.array([2, 3, 2, 3])
    ensemble = EnsembleResult(
        oof=OOF.assign(label=vote_labels),
        test=TEST,
        metrics={
            **cv_summary([{"waf": 0.875, "accuracy": 0.75}], truth_idx, truth_idx),
            "members_mean_oof_waf": 0.8,
        },
    )
    inputs = ReportInputs(
        run_dir=str(tmp_path),
        members=[(Variant("ecmf", ()), relabelled)],
        ensemble=ensemble,
        ablation=[
            (Variant("Baseline", (), "original"), baseline),
            (Variant("+ relabel", (), "refined"), relabelled),
        ],
        submission_rows=2,
        truth=TRUTH,
        reference=REFERENCE,
    )
    report = Path(write_report(str(tmp_path), inputs)).read_text()
    ablation = report[report.index("## Ablation") :]
    header = (
        "| Methods | labels learnt | WAF / val, original labels | pooled, original labels | "
        "agreement with the vote | WAF / val, epoch picked on the fold | OOF WAF, true labels | WAF / test |"
    )
    assert header in ablation
    # Same predictions, so the same score against the original labels, whatever labels each row learnt.
    assert "| Baseline | original | 66.67% | 73.33% | - | - | 100.00% | 33.33% |" in ablation
    assert "| + relabel | refined | 66.67% | 73.33% | 87.50% | 75.00% | 100.00% | 33.33% |" in ablation
    assert "| + Ensemble learning | refined | 66.67% | 73.33% | 87.50% | - | 100.00% | 33.33% |" in ablation
    assert "is no measure of accuracy" in ablation
    assert "picked on the same held-out fold" in report and "select_epoch=inner" in report
    members = report[report.index("## Ensemble") : report.index("## Ablation")]
    assert (
        "| ecmf | (base config) | refined | `relabel` | 66.67% | 73.33% | 87.50% | 75.00% | 100.00% | 33.33% |"
        in members
    )
