"""train.select_epoch: the best epoch picked on the held-out fold, or on an inner split of the training fold."""

import numpy as np
import pandas as pd
import pytest
import torch
from fake_features import small_config
from fold_runs import straight_and_resumed
from omegaconf import OmegaConf

from ecmf_ray.train.checkpoint import load_tensors
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.loop import FoldRun, inner_selection_rows, set_torch_threads


def configs(fake_run, *overrides):
    cfg = small_config(fake_run, "train.max_epochs=6", "train.early_stopping_patience=null", *overrides)
    return OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train)


def test_inner_rows_are_a_stratified_part_of_the_training_fold(fake_run, tmp_path):
    data = load_feature_set(fake_run, ["audio"], 3, seed=42)
    inner = inner_selection_rows(data, 1, seed=42)
    training = np.flatnonzero((data.folds >= 0) & (data.folds != 1))
    assert set(inner) <= set(training)
    # 1/(K-1) of it (K=3), stratified: half of each class, to one video.
    per_class = np.bincount(data.labels[training], minlength=6)
    assert np.abs(np.bincount(data.labels[inner], minlength=6) - per_class / 2).max() <= 1
    np.testing.assert_array_equal(inner, inner_selection_rows(data, 1, seed=42))  # seeded
    assert not np.array_equal(inner, inner_selection_rows(data, 1, seed=7))
    # Pseudo-labelled test videos (training-only rows) are never held out for selection.
    test_ids = data.video_ids[data.split == "test"]
    pd.DataFrame({"video_id": test_ids, "label": "sad"}).to_csv(tmp_path / "pseudo.csv", index=False)
    pseudo = load_feature_set(fake_run, ["audio"], 3, seed=42, labels_uri=str(tmp_path / "pseudo.csv"))
    np.testing.assert_array_equal(inner_selection_rows(pseudo, 1, seed=42), inner)


def test_inner_selection_scores_the_held_out_fold_at_the_inner_best_epoch(fake_run):
    set_torch_threads(1)
    data = load_feature_set(fake_run, ["audio", "text"], 3, seed=42)
    model_cfg, train_cfg = configs(fake_run, "model.branches=[audio,text]", "train.select_epoch=inner")
    run = FoldRun(data, 0, model_cfg, train_cfg, seed=42)
    assert not set(run.select_rows) & set(run.train_rows) and not set(run.select_rows) & set(run.val_rows)
    while not run.done:
        run.step()
    history = pd.DataFrame(run.history)
    best = history.loc[history["select_waf"].idxmax()]  # the first epoch with the best inner WAF
    assert run.best_epoch == best["epoch"] and run.best_waf == best["val_waf"]
    assert run.fold_selected_waf == history["val_waf"].max() >= run.best_waf
    summary = run.summary()
    assert summary["select_epoch"] == "inner" and summary["fold_selected_waf"] == run.fold_selected_waf

    # fold: the held-out fold picks its own epoch; both numbers are the same.
    model_cfg, train_cfg = configs(fake_run, "model.branches=[audio,text]")
    run = FoldRun(data, 0, model_cfg, train_cfg, seed=42)
    assert np.array_equal(run.select_rows, run.val_rows)
    while not run.done:
        run.step()
    assert run.best_waf == run.fold_selected_waf == max(h["val_waf"] for h in run.history)


def test_inner_selection_resumes_exactly_and_refuses_a_fold_checkpoint(fake_run, tmp_path):
    set_torch_threads(1)
    data = load_feature_set(fake_run, ["audio", "text"], 3, seed=42)
    model_cfg, train_cfg = configs(fake_run, "model.branches=[audio,text]", "train.select_epoch=inner")
    straight, _, resumed = straight_and_resumed(data, 2, model_cfg, train_cfg, tmp_path)
    assert resumed.history == straight.history and resumed.summary() == straight.summary()
    for key, value in straight.best_state.items():
        torch.testing.assert_close(resumed.best_state[key], value, rtol=0, atol=0)

    other = FoldRun(data, 2, *configs(fake_run, "model.branches=[audio,text]"), seed=42)
    with pytest.raises(ValueError, match="selected epochs by 'inner'"):
        other.load_state(*load_tensors(str(tmp_path / "state.safetensors")))
    with pytest.raises(ValueError, match="train.select_epoch must be one of fold, inner"):
        FoldRun(data, 2, model_cfg, {**train_cfg, "select_epoch": "test"}, seed=42)
