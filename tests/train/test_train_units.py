"""Pure pieces of training: standardisation, folds, WAF, batching, alignment, checkpoints."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from fake_features import small_config
from fold_runs import straight_and_resumed
from omegaconf import OmegaConf
from safetensors import safe_open
from sklearn.metrics import f1_score

from ecmf_ray.data.manifest import manifest_path
from ecmf_ray.finalize.ensemble import vote
from ecmf_ray.finalize.experiments import Experiment
from ecmf_ray.labels import EMOTIONS, EXCLUDED
from ecmf_ray.train.checkpoint import load_tensors, save_tensors
from ecmf_ray.train.data import (
    align_branch,
    experiment_inputs,
    load_feature_set,
    read_label_table,
    replace_labels,
)
from ecmf_ray.train.distributed import fold_concurrency
from ecmf_ray.train.folds import assign_folds
from ecmf_ray.train.loop import FoldRun, epoch_batches, set_torch_threads
from ecmf_ray.train.metrics import cv_summary, waf
from ecmf_ray.train.outputs import load_fold_model, write_experiment, write_fold
from ecmf_ray.train.standardize import apply_standardizer, fit_standardizer


def test_standardizer_fits_present_rows_only():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [1000.0, -1000.0]], dtype=np.float32)
    present = np.array([True, True, False])
    mean, std = fit_standardizer(x, present)
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(std, [1.0, 1.0])  # constant dim: std 1, not 0
    out = apply_standardizer(x, mean, std, present)
    np.testing.assert_allclose(out, [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    assert out.dtype == np.float32
    mean, std = fit_standardizer(x, np.zeros(3, bool))
    assert mean.tolist() == [0, 0] and std.tolist() == [1, 1]


def test_folds_are_stratified_seeded_and_skip_unlabelled():
    labels = np.array([c for c in range(6) for _ in range(10)] + [-1] * 7)
    folds = assign_folds(labels, 5, seed=3)
    assert (folds[labels < 0] == -1).all()
    for fold in range(5):
        assert np.bincount(labels[folds == fold], minlength=6).tolist() == [2] * 6
    assert (assign_folds(labels, 5, seed=3) == folds).all()
    assert not (assign_folds(labels, 5, seed=4) == folds).all()
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(labels, 1, seed=0)


def test_waf_is_sklearn_weighted_f1_and_summary():
    y, p = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    assert waf(y, p) == pytest.approx(f1_score(y, p, average="weighted"))
    summary = cv_summary([{"waf": 0.5, "accuracy": 0.6}, {"waf": 0.7, "accuracy": 0.8}], y, p)
    assert summary["cv_waf"] == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1)}
    assert list(summary["per_class_f1"]) == list(EMOTIONS)
    matrix = np.array(summary["confusion_matrix"]["matrix"])
    assert matrix.shape == (6, 6) and matrix.sum() == 6 and matrix[2, 2] == 2


def test_epoch_batches_cover_every_row():
    batches = epoch_batches(10, 4, seed=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    ranks = [epoch_batches(11, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # same number of steps on every rank
    assert set(np.concatenate([np.concatenate(r) for r in ranks]).tolist()) == set(range(11))


def test_align_branch_marks_missing_nan_and_keeps_first_duplicate():
    ids = pd.Index(["a", "b", "c", "d"])
    matrix = np.array([[1, 1], [2, 2], [np.nan, 0], [9, 9]], dtype=np.float32)
    out, present = align_branch(ids, ["a", "b", "c", "a"], matrix)
    assert present.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(out, [[1, 1], [2, 2], [0, 0], [0, 0]])


def test_feature_set_from_the_store(fake_run, tmp_path):
    data = load_feature_set(fake_run, ["audio", "text"], 3, seed=42)
    assert data.dims == [64, 64] and len(data.video_ids) == 270
    assert (data.labels >= 0).sum() == 240 and len(data.predict_rows()) == 30
    assert (~data.present).sum(axis=0).tolist() == [4, 4]  # the fake extraction's failures
    assert data.n_folds == 3 and (data.folds[data.labels < 0] == -1).all()
    shutil.copy(manifest_path(fake_run), manifest_path(str(tmp_path)))  # a run not yet extracted
    with pytest.raises(FileNotFoundError, match="ecmf extract"):
        load_feature_set(str(tmp_path), ["audio"], 3, seed=0)


def test_an_experiments_inputs_from_features_loaded_for_several(fake_run, tmp_path):
    """Each experiment of a batch takes its branches, folds (its own seed and count) and labels from one load."""
    shared = load_feature_set(fake_run, ["audio", "text"], 3, seed=0)
    pd.DataFrame({"video_id": shared.video_ids[shared.labels >= 0][:3], "label": "sad"}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    for branches, folds, seed, labels in ((["text"], 3, 0, None), (["text", "audio"], 4, 7, "labels.csv")):
        uri = str(tmp_path / labels) if labels else None
        view = experiment_inputs(shared, branches, folds, seed, uri)
        alone = load_feature_set(fake_run, branches, folds, seed, uri)
        assert view.branches == alone.branches and view.n_folds == folds
        for name in ("labels", "folds", "present", "video_ids"):
            np.testing.assert_array_equal(getattr(view, name), getattr(alone, name))
        for mine, theirs in zip(view.features, alone.features, strict=True):
            np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ValueError, match=r"branch\(es\) \['face'\] were not loaded"):
        experiment_inputs(shared, ["face"], 3, 0)


def test_label_table_replaces_labels_and_adds_training_only_rows(fake_run, tmp_path):
    data = load_feature_set(fake_run, ["audio"], 3, seed=0)
    train_ids, test_ids = data.video_ids[data.labels >= 0], data.video_ids[data.labels < 0]
    table = pd.DataFrame(
        {"video_id": [*train_ids, *test_ids[:2]], "label": ["happy"] * len(train_ids) + ["sad", "sad"]}
    )
    table.to_parquet(tmp_path / "labels.parquet")
    out = load_feature_set(fake_run, ["audio"], 3, seed=0, labels_uri=str(tmp_path / "labels.parquet"))
    happy, sad = EMOTIONS.index("happy"), EMOTIONS.index("sad")
    assert (out.labels[data.labels >= 0] == happy).all()
    rows = np.isin(out.video_ids, test_ids[:2])
    assert (out.labels[rows] == sad).all() and (out.folds[rows] == -1).all()  # training rows only
    assert (out.folds[data.labels >= 0] >= 0).all() and (out.labels[data.labels < 0] >= 0).sum() == 2
    # Folds come from the manifest's labels, not the table's (all "happy" here): the same as without it.
    np.testing.assert_array_equal(out.folds, data.folds)
    # A CSV with some rows undecided (empty label) changes only the decided ones.
    pd.DataFrame({"video_id": train_ids[:2], "label": ["angry", ""]}).to_csv(
        tmp_path / "some.csv", index=False
    )
    out = load_feature_set(fake_run, ["audio"], 3, seed=0, labels_uri=str(tmp_path / "some.csv"))
    row = int(np.flatnonzero(out.video_ids == train_ids[0])[0])
    assert out.labels[row] == EMOTIONS.index("angry")
    assert set(np.flatnonzero(out.labels != data.labels)) <= {row}  # the undecided row keeps its label


def test_an_unusable_row_is_neither_trained_nor_validated_on(fake_run, tmp_path):
    cfg = small_config(fake_run)
    branches = list(cfg.model.branches)
    data = load_feature_set(fake_run, branches, 3, seed=0)
    train_ids, test_ids = data.video_ids[data.labels >= 0], data.video_ids[data.labels < 0]
    # Two training clips left out, one relabelled; a test clip marked unusable stays a row to predict.
    pd.DataFrame(
        {"video_id": [*train_ids[:3], test_ids[0]], "label": [EXCLUDED, EXCLUDED, "sad", EXCLUDED]}
    ).to_parquet(tmp_path / "labels.parquet")  # as finalize writes the refined labels
    out = load_feature_set(fake_run, branches, 3, seed=0, labels_uri=str(tmp_path / "labels.parquet"))
    left_out = np.flatnonzero(np.isin(out.video_ids, train_ids[:2]))
    assert (out.labels[left_out] == -1).all() and (out.folds[left_out] == -1).all()
    assert out.labels[out.video_ids == train_ids[2]] == EMOTIONS.index("sad")
    others = np.setdiff1d(np.flatnonzero(data.labels >= 0), left_out)
    np.testing.assert_array_equal(out.folds[others], data.folds[others])  # every other fold as it was
    assert test_ids[0] in out.video_ids[out.predict_rows()]
    model_cfg, train_cfg = OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train)
    for fold in range(out.n_folds):
        for select in ("inner", "fold"):
            run = FoldRun(out, fold, model_cfg, {**train_cfg, "select_epoch": select}, seed=0)
            assert not set(left_out) & {*run.train_rows, *run.val_rows, *run.select_rows}
        write_fold(str(tmp_path / "exp"), run, out)  # untrained: only which rows it predicts matters
    # No out-of-fold prediction of a left-out clip, so the ensemble's vote and every score never see it.
    write_experiment(str(tmp_path / "exp"), out)
    experiment = Experiment.read("member", str(tmp_path / "exp"))
    assert len(experiment.oof) == len(train_ids) - 2 and experiment.oof["label"].isin(EMOTIONS).all()
    learnt = vote([experiment, experiment]).oof.set_index("video_id")["label"]
    assert not set(train_ids[:2]) & set(learnt.index) and learnt[train_ids[2]] == "sad"


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ("video_id,emotion\nv1,happy\n", "missing column.*label"),
        ("video_id,label\nv1,unusable\nv2,bored\n", "row 2 \\(v2\\): 'bored' is not one of .*, unusable"),
        ("video_id,label\nv1,happy\nv1,sad\n", "row 2: 'v1' appears again"),
    ],
)
def test_bad_label_tables_name_file_and_row(tmp_path, rows, error):
    path = tmp_path / "labels.csv"
    path.write_text(rows)
    with pytest.raises(ValueError, match=f"labels.csv: {error}"):
        read_label_table(str(path))


def test_label_table_must_name_known_videos(fake_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such label file"):
        load_feature_set(fake_run, ["audio"], 3, seed=0, labels_uri=str(tmp_path / "none.csv"))
    known = load_feature_set(fake_run, ["audio"], 3, seed=0).video_ids[0]
    # A repeated row with the same label is no conflict; an unknown video is an error.
    (tmp_path / "ghost.csv").write_text(f"video_id,label\n{known},happy\n{known},happy\nnot_a_video,sad\n")
    with pytest.raises(ValueError, match="train.labels .*ghost.csv.*'not_a_video' is not in the manifest"):
        load_feature_set(fake_run, ["audio"], 3, seed=0, labels_uri=str(tmp_path / "ghost.csv"))
    table = pd.Series(["sad"], index=["u"])
    split, labels = np.array(["train", "train"], dtype=object), np.array([0, -1])
    with pytest.raises(ValueError, match="'u' is a training video without a usable manifest label"):
        replace_labels(np.array(["t", "u"], dtype=object), split, labels, table, "labels.csv")


def test_resumed_fold_matches_an_uninterrupted_one(fake_run, tmp_path):
    set_torch_threads(1)
    cfg = small_config(fake_run, "train.max_epochs=6")
    model_cfg, train_cfg = OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train)
    data = load_feature_set(fake_run, list(cfg.model.branches), 3, seed=42)
    straight, first, resumed = straight_and_resumed(data, 1, model_cfg, train_cfg, tmp_path)
    assert resumed.history == straight.history
    for key, value in straight.best_state.items():
        torch.testing.assert_close(resumed.best_state[key], value, rtol=0, atol=0)
    # The resume checkpoint holds the model and optimizer, never the best weights (saved on their own).
    state, meta = load_tensors(str(tmp_path / "state.safetensors"))
    assert not [k for k in state if k.startswith("best.")] and meta["best_epoch"] == first.best_epoch
    stale = FoldRun(data, 1, model_cfg, train_cfg, seed=42)
    stale.load_state(state, {**meta, "best_epoch": meta["best_epoch"] + 1})
    with pytest.raises(ValueError, match="whose checkpoint's best epoch is"):
        stale.load_best(*load_tensors(str(tmp_path / "best.safetensors")))

    # The exported fold model is plain safetensors and predicts exactly like the run's best epoch.
    path = str(tmp_path / "fold.safetensors")
    save_tensors(path, *straight.export())
    with safe_open(path, framework="pt") as f:
        names, metadata = list(f.keys()), f.metadata()
    assert "standardizer.audio.mean" in names and "model.classifier.weight" in names and metadata["format"]
    model, standardizers, meta = load_fold_model(path)
    assert meta["fold"] == 1 and meta["dims"] == data.dims and set(standardizers) == set(data.branches)
    straight.use_best()
    rows = data.predict_rows()[:5]
    with torch.no_grad():
        features = [
            torch.from_numpy(apply_standardizer(x[rows], *standardizers[b], data.present[rows, i]))
            for i, (b, x) in enumerate(zip(data.branches, data.features, strict=True))
        ]
        probs = torch.softmax(model(features, torch.from_numpy(data.present[rows])), dim=1).numpy()
    np.testing.assert_allclose(probs, straight.predict(rows), rtol=1e-5, atol=1e-6)


def test_fold_concurrency_is_bounded_by_config_not_by_the_cluster_at_the_start():
    # null: every fold starts, whatever the cluster holds now (an autoscaling one may hold no worker yet).
    assert fold_concurrency(None, 5) == 5
    assert fold_concurrency(2, 5) == 2
    assert fold_concurrency(8, 5) == 5
    # null with a known cluster size: no more trials than it can ever run (the rest wait unstarted).
    assert fold_concurrency(None, 96, slots=16) == 16 and fold_concurrency(None, 5, slots=16) == 5
    assert fold_concurrency(3, 96, slots=16) == 3
    with pytest.raises(ValueError, match="max_concurrent_folds"):
        fold_concurrency(0, 5)


def test_a_joined_clusters_capacity_is_unknown():
    """A joined cluster may grow by means this process cannot see (an autoscaler, whose node types Ray 2.60
    publishes through no public API): no bound on its folds, and a pool shortfall is only a warning."""
    from ecmf_ray.extract import resources

    assert resources.cluster_capacity(joined=True) is None


def test_trial_concurrency_is_bounded_by_config_not_by_the_cluster_at_the_start():
    from ecmf_ray.train.tune import trial_concurrency

    tune = OmegaConf.create({"max_concurrent_trials": None, "num_samples": 12, "search": "random"})
    assert trial_concurrency(tune) is None  # Tune queues every trial itself
    assert trial_concurrency(OmegaConf.merge(tune, {"search": "optuna"})) == 12
    assert trial_concurrency(OmegaConf.merge(tune, {"max_concurrent_trials": 3})) == 3
    with pytest.raises(ValueError, match="max_concurrent_trials"):
        trial_concurrency(OmegaConf.merge(tune, {"max_concurrent_trials": 0}))
