"""Cross-validation in one process (what a Tune trial runs): fusion beats every single branch."""

import numpy as np
from fake_features import small_config
from omegaconf import OmegaConf

from ecmf_ray.features import BRANCHES
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.loop import cross_validate, set_torch_threads


def cv_waf(run_dir: str, *overrides: str) -> float:
    cfg = small_config(run_dir, *overrides)
    data = load_feature_set(run_dir, list(cfg.model.branches), int(cfg.train.folds), int(cfg.seed))
    epochs = []
    runs = cross_validate(
        data,
        OmegaConf.to_container(cfg.model),
        OmegaConf.to_container(cfg.train),
        int(cfg.seed),
        epochs.append,
    )
    assert epochs[-1]["done"] and epochs[-1]["cv_waf"] == np.mean([r.best_waf for r in runs])
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))  # one summary per epoch
    return float(np.mean([run.best_waf for run in runs]))


def test_fusion_beats_every_single_branch_and_chance(fake_run):
    set_torch_threads(1)
    fused = cv_waf(fake_run)
    unimodal = {b: cv_waf(fake_run, "model.name=unimodal", f"model.branches=[{b}]") for b in BRANCHES}
    print(f"ecmf {fused:.3f}; unimodal {unimodal}")
    assert fused > max(unimodal.values()) + 0.03
    assert fused > 0.5  # chance is about 1/6
