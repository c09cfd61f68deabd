"""The train job on Ray: outputs, parallel = sequential = in-process, resume after a killed driver."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_features import SMALL, driver_log, small_config, start_driver
from omegaconf import OmegaConf

from ecmf_ray.labels import EMOTIONS
from ecmf_ray.train.data import load_feature_set
from ecmf_ray.train.distributed import Batch, fold_slots, run_train, train_experiments
from ecmf_ray.train.loop import cross_validate, set_torch_threads
from ecmf_ray.train.outputs import PROB_COLUMNS

# Two folds keep Ray's per-fold start-up cost down; the interrupted run needs time between its
# first checkpoint and its end to be killed in.
FOLDS, EPOCHS = 2, 30
RAY = [f"train.folds={FOLDS}", f"train.max_epochs={EPOCHS}", "train.early_stopping_patience=null"]


def read_outputs(exp_dir: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    metrics = json.loads(Path(exp_dir, "metrics.json").read_text())
    return (
        metrics,
        pd.read_parquet(Path(exp_dir, "oof.parquet")),
        pd.read_parquet(Path(exp_dir, "test_pred.parquet")),
    )


def assert_same_results(a: str, b: str) -> None:
    (ma, oa, ta), (mb, ob, tb) = read_outputs(a), read_outputs(b)
    assert ma["cv_waf"]["mean"] == pytest.approx(mb["cv_waf"]["mean"], abs=1e-9)
    assert [f["waf"] for f in ma["per_fold"]] == pytest.approx([f["waf"] for f in mb["per_fold"]], abs=1e-9)
    assert [f["best_epoch"] for f in ma["per_fold"]] == [f["best_epoch"] for f in mb["per_fold"]]
    pd.testing.assert_frame_equal(oa.drop(columns=PROB_COLUMNS), ob.drop(columns=PROB_COLUMNS))
    np.testing.assert_allclose(oa[PROB_COLUMNS], ob[PROB_COLUMNS], atol=1e-6)
    np.testing.assert_allclose(ta[PROB_COLUMNS], tb[PROB_COLUMNS], atol=1e-6)


def release_orphaned_placement_groups(ray, wait_s: float = 20.0) -> None:
    """Free the CPUs a killed driver's Train runs still hold.

    Ray Train's PlacementGroupCleaner removes a dead controller's placement group once the State
    API shows the controller dead; the test cluster runs without a dashboard, so there is no
    State API. Nothing else runs on the cluster now, so every live group is the killed run's.
    """
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            for pg_id, info in placement_group_table().items():
                if info["state"] == "CREATED":
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
            deadline = float("inf")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def parallel(ray_cluster, fake_run):
    cfg = small_config(fake_run, *RAY, "train.experiment=parallel", "train.max_concurrent_folds=2")
    return cfg, run_train(cfg)


def test_outputs(parallel, fake_run):
    cfg, result = parallel
    exp_dir = result["experiment_dir"]
    metrics, oof, test = read_outputs(exp_dir)
    assert metrics["folds"] == FOLDS and len(metrics["per_fold"]) == FOLDS
    assert set(metrics["cv_waf"]) == {"mean", "std"} and metrics["cv_waf"] == result["cv_waf"]
    assert metrics["cv_waf"]["mean"] > 0.4
    assert list(metrics["per_class_f1"]) == list(EMOTIONS)
    assert np.array(metrics["confusion_matrix"]["matrix"]).sum() == 240
    assert list(oof.columns) == ["video_id", "fold", *PROB_COLUMNS, "predicted", "label"]
    assert len(oof) == 240 and oof["video_id"].is_unique and set(oof["fold"]) == set(range(FOLDS))
    assert list(test.columns) == ["video_id", "split", *PROB_COLUMNS, "predicted"]
    assert len(test) == 30 and set(test["split"]) == {"test", "unlabeled"}
    np.testing.assert_allclose(test[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-5)
    for fold in range(FOLDS):
        assert Path(exp_dir, "checkpoints", f"fold{fold}.safetensors").is_file()
    assert not list(Path(exp_dir).rglob("*.pt")) and not list(Path(exp_dir, "checkpoints").glob("*.pkl"))
    # Resume checkpoints: model + optimizer per report, the best weights only when they changed; a finished
    # fold keeps none of the latter (its model is in checkpoints/).
    assert not list(Path(exp_dir).rglob("best-epoch*"))
    for f in metrics["per_fold"]:
        written = f["checkpoints"]
        assert 1 <= written["best_writes"] <= written["reports"] and written["state_bytes"] > 0
        assert written["reports"] == (f["epochs"] - 1) // 2  # every 2 epochs; a finished fold writes none
        assert f["started_at"] < f["finished_at"] and f["started_at"].endswith("+00:00")
    assert metrics["started_at"] == min(f["started_at"] for f in metrics["per_fold"])

    # The same folds trained in this process, in lockstep, give the same scores.
    set_torch_threads(1)
    data = load_feature_set(fake_run, list(cfg.model.branches), FOLDS, int(cfg.seed))
    runs = cross_validate(
        data, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train), int(cfg.seed)
    )
    assert [r.best_waf for r in runs] == pytest.approx([f["waf"] for f in metrics["per_fold"]], abs=1e-9)


def test_sequential_run_matches_parallel_beside_a_failing_experiment(parallel, fake_run):
    """One fold at a time, in one batch with an experiment whose folds fail in their workers (the optimizer
    refuses a negative learning rate, and max_failures=0 gives up at once): the batch trains every fold
    of the other experiment, then fails naming the failed folds; a rerun finds those folds done."""
    cfg = small_config(fake_run, *RAY, "train.experiment=sequential", "train.max_concurrent_folds=1")
    failing = small_config(fake_run, *RAY, "train.experiment=failing", "train.lr=-1", "train.max_failures=0")
    with pytest.raises(
        RuntimeError, match="(?s)training failed for failing fold 0, failing fold 1: .*learning rate"
    ):
        train_experiments([cfg, failing], batch=Batch(max_concurrent_folds=1))
    folds = sorted(Path(parallel[1]["experiment_dir"]).parent.glob("sequential/folds/*/result.json"))
    assert len(folds) == FOLDS
    written = [f.stat().st_mtime_ns for f in folds]
    result = run_train(cfg)
    assert [f.stat().st_mtime_ns for f in folds] == written  # trained once, in the failed batch
    assert_same_results(parallel[1]["experiment_dir"], result["experiment_dir"])


def test_rerun_reuses_finished_folds_and_refuses_a_changed_config(parallel, fake_run):
    cfg, result = parallel
    folds = sorted(Path(result["experiment_dir"]).glob("folds/*/result.json"))
    written = [f.stat().st_mtime_ns for f in folds]
    assert run_train(cfg)["cv_waf"] == result["cv_waf"]
    assert [f.stat().st_mtime_ns for f in folds] == written  # no fold trained again
    with pytest.raises(ValueError, match="different config"):
        run_train(small_config(fake_run, *RAY, "train.experiment=parallel", "train.lr=0.1"))


def test_killed_run_resumes_from_checkpoints(parallel, fake_run, ray_cluster, tmp_path):
    overrides = [*RAY, "train.experiment=resumed", "train.max_concurrent_folds=2"]
    exp_dir = Path(small_config(fake_run, *overrides).run_dir, "train", "resumed")
    args = [f"run_dir={fake_run}", *SMALL, *overrides]
    log = tmp_path / "driver.log"
    proc = start_driver(ray_cluster, "ecmf_ray.train.distributed:run_train", args, log)
    deadline = time.monotonic() + 240
    try:
        while not list(exp_dir.glob("ray/fold*/checkpoint_manager_snapshot.json")):
            assert proc.poll() is None, f"the driver ended before its first checkpoint; {driver_log(log)}"
            assert time.monotonic() < deadline, f"no checkpoint within 240 s; {driver_log(log)}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; Ray ends its trials and workers
        proc.wait()
    finished = [f for f in range(FOLDS) if (exp_dir / "folds" / f"fold{f}" / "result.json").exists()]
    assert len(finished) < FOLDS
    release_orphaned_placement_groups(ray_cluster)

    result = run_train(small_config(fake_run, *overrides))
    resumed = [f for f in result["per_fold"] if f["resumed_from_epoch"] > 0]
    assert resumed, "no fold picked up its checkpoint"
    assert all(f["resumed_from_epoch"] < EPOCHS for f in resumed)  # interrupted mid-training
    assert_same_results(parallel[1]["experiment_dir"], result["experiment_dir"])


def test_folds_default_to_what_the_cluster_this_process_started_holds(ray_cluster, fake_run):
    """2 CPUs: two one-CPU folds at a time (the rest wait unstarted)."""
    assert fold_slots(small_config(fake_run, *RAY)) == 2
    assert fold_slots(small_config(fake_run, *RAY, "train.cpus_per_worker=2")) == 1
