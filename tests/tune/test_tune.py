"""The tune job on Ray: a small search's outputs, best.yaml into `ecmf train`, grid over audio
feature folders, and resuming a search whose driver was killed."""

import glob
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from fake_features import driver_log, start_driver, write_fake_run  # noqa: E402
from test_search_space import DEFAULT_SEARCHED  # noqa: E402

from ecmf_ray.config import configs_dir, load_config  # noqa: E402
from ecmf_ray.train.distributed import run_train  # noqa: E402
from ecmf_ray.train.tune import run_tune  # noqa: E402

# Fixed settings of every search here; searched keys stay out of them, or they would override best.yaml.
FIXED = ["train.folds=2", "train.early_stopping_patience=null", "model.ffn_mult=2", "tune.checkpoint_every=2"]
# A small space that learns something in a few epochs.
SPACE = [
    "tune.space.model.hidden=[choice,16,32]",
    "tune.space.model.attention_layers=[choice,1,2]",
    "tune.space.train.lr=[loguniform,1e-3,1e-2]",
    "tune.space.train.batch_size=[choice,32,64]",
]
NOT_SEARCHED = [f"tune.space.{key}=null" for key in DEFAULT_SEARCHED]


def config(run_dir: str, *overrides: str):
    return load_config(["local"], [f"run_dir={run_dir}", *FIXED, *overrides])


def trial_dirs(run_dir: str) -> dict[str, Path]:
    return {p.name.removeprefix("trial_"): p for p in Path(run_dir, "tune", "ray", "search").glob("trial_*")}


def iterations(trial_dir: Path) -> list[int]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line)["training_iteration"] for line in lines]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    run_dir = str(tmp_path_factory.mktemp("tune_run"))
    write_fake_run(run_dir, n_train=120, n_test=12, separation=4.0)
    return run_dir


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory, fake_run):
    """Optuna + ASHA: 4 trials of 2 folds, 6 epochs at most."""
    run_dir = str(tmp_path_factory.mktemp("search"))
    os.symlink(Path(fake_run, "manifest.parquet"), Path(run_dir, "manifest.parquet"))
    os.symlink(Path(fake_run, "features"), Path(run_dir, "features"))
    overrides = [*SPACE, "train.max_epochs=6", "tune.search=optuna", "tune.num_samples=4"]
    overrides += ["tune.scheduler=asha", "tune.grace_period=2", "tune.reduction_factor=2"]
    return run_dir, overrides, run_tune(config(run_dir, *overrides))


def test_search_writes_trials_best_and_tensorboard(searched):
    run_dir, _, result = searched
    trials = pd.read_csv(Path(run_dir, "tune", "trials.csv"))
    assert len(trials) == 4 and trials["trial_id"].is_unique and set(trials["status"]) == {"TERMINATED"}
    assert {
        "model.hidden",
        "model.attention_layers",
        "train.lr",
        "train.batch_size",
        "cv_waf",
        "epochs",
    } <= set(trials.columns)
    assert trials["epochs"].between(1, 6).all() and trials["cv_waf"].between(0, 1).all()
    assert trials["cv_waf"].is_monotonic_decreasing  # best first
    # The first trial is the starting config (local.yaml + FIXED): marked, and never better than the best.
    start = trials[trials["start"]]
    assert len(start) == 1 and start["model.hidden"].iloc[0] == 128 and start["train.lr"].iloc[0] == 1e-3
    assert (
        trials["cv_waf"].iloc[0] >= start["cv_waf"].iloc[0]
        and result["start_cv_waf"] == start["cv_waf"].iloc[0]
    )
    assert result["cv_waf"] == trials["cv_waf"].iloc[0] and result["best_trial"] == trials["trial_id"].iloc[0]
    # Every trial has its TensorBoard event file, in its own folder.
    dirs = trial_dirs(run_dir)
    assert set(dirs) == set(trials["trial_id"])
    assert all(list(d.glob("events.out.tfevents.*")) for d in dirs.values())

    best = yaml.safe_load(Path(run_dir, "tune", "best.yaml").read_text())
    base = yaml.safe_load((configs_dir() / "base.yaml").read_text())
    assert set(best) == {"model", "train"}
    assert all(set(best[s]) <= set(base[s]) for s in best)
    assert best["model"]["hidden"] == trials["model.hidden"].iloc[0]
    assert best["train"]["lr"] == pytest.approx(trials["train.lr"].iloc[0])


def test_best_yaml_trains_to_the_trial_score(searched):
    """best.yaml's own command, `ecmf train --config RUN/tune/search.yaml --config RUN/tune/best.yaml`, scores
    what the trial did."""
    run_dir, _, result = searched
    trials = pd.read_csv(Path(run_dir, "tune", "trials.csv"))
    epochs = int(trials["epochs"].iloc[0])  # ASHA may have stopped it: train as long as it ran
    best = Path(run_dir, "tune", "best.yaml")
    search = str(Path(run_dir, "tune", "search.yaml"))
    assert f"# Use: ecmf train --config {search} --config best.yaml" in best.read_text()
    cfg = load_config([search, str(best)], [f"train.max_epochs={epochs}"])
    assert cfg.train.experiment == "tuned"
    trained = run_train(cfg)
    assert trained["cv_waf"]["mean"] == pytest.approx(result["cv_waf"], abs=1e-6)


def test_search_never_returns_worse_than_its_start(ray_cluster, tmp_path, fake_run):
    """A good start (lr 3e-3) and a space of learning rates far too small for 4 epochs: the start is the
    first trial, ASHA never stops it early, and the best is at least the start's cv_waf (here: the start)."""
    from ecmf_ray.train.data import load_feature_set
    from ecmf_ray.train.loop import cross_validate, set_torch_threads

    run_dir = str(tmp_path)
    os.symlink(Path(fake_run, "manifest.parquet"), Path(run_dir, "manifest.parquet"))
    os.symlink(Path(fake_run, "features"), Path(run_dir, "features"))
    overrides = [*NOT_SEARCHED, "tune.space.train.lr=[logfactor,0.001,0.003]", "train.lr=3e-3"]
    overrides += ["train.max_epochs=4", "tune.search=random", "tune.num_samples=3"]
    overrides += ["tune.scheduler=asha", "tune.grace_period=1", "tune.reduction_factor=2"]
    cfg = config(run_dir, *overrides)
    result = run_tune(cfg)
    trials = pd.read_csv(Path(run_dir, "tune", "trials.csv"))
    start = trials[trials["start"]].iloc[0]
    assert trials["start"].sum() == 1 and start["train.lr"] == 3e-3 and start["epochs"] == 4
    assert result["cv_waf"] >= start["cv_waf"] and result["best_trial"] == start["trial_id"]
    assert "the starting config itself; no trial beat it" in Path(run_dir, "tune", "best.yaml").read_text()
    # The start trial's score is what training the starting config gives.
    set_torch_threads(1)
    data = load_feature_set(run_dir, list(cfg.model.branches), int(cfg.train.folds), int(cfg.seed))
    runs = cross_validate(
        data, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train), int(cfg.seed)
    )
    assert start["cv_waf"] == pytest.approx(np.mean([r.best_waf for r in runs]), abs=1e-6)


def test_grid_over_audio_feature_folders(ray_cluster, tmp_path, fake_run):
    """Two HuBERT layer combinations as two audio folders: the grid tries both, the informative one wins."""
    informative = tmp_path / "informative"
    write_fake_run(str(informative), n_train=120, n_test=12, p_informative=1.0, separation=8.0)
    folders = [str(Path(fake_run, "features", "audio")), str(informative / "features" / "audio")]
    overrides = [*NOT_SEARCHED, "tune.search=grid", "tune.scheduler=fifo", "train.max_epochs=4"]
    overrides += ["train.lr=3e-3", f"tune.audio_features=[{folders[0]},{folders[1]}]"]
    run_dir = str(tmp_path / "run")
    os.makedirs(Path(run_dir, "features"))
    os.symlink(Path(fake_run, "manifest.parquet"), Path(run_dir, "manifest.parquet"))
    for branch in ("frame", "face", "text"):  # no features/audio: only the listed folders are read
        os.symlink(Path(fake_run, "features", branch), Path(run_dir, "features", branch))
    run_tune(config(run_dir, *overrides))
    trials = pd.read_csv(Path(run_dir, "tune", "trials.csv"))
    assert sorted(trials["audio_features"]) == sorted(folders)
    assert trials["audio_features"].iloc[0] == folders[1]
    assert trials.set_index("audio_features")["start"].to_dict() == {folders[0]: True, folders[1]: False}
    assert folders[1] in Path(run_dir, "tune", "best.yaml").read_text()  # said in a comment


def experiment_state(run_dir: str) -> dict[str, dict]:
    """Trial id -> (status, last result) from Tune's newest experiment snapshot."""
    files = glob.glob(os.path.join(run_dir, "tune", "ray", "search", "experiment_state-*.json"))
    if not files:
        return {}
    try:
        data = json.loads(Path(max(files, key=os.path.getmtime)).read_text())
    except (OSError, ValueError):  # caught mid-write
        return {}
    trials = {}
    for trial_json, runtime_json in data["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        trials[trial["trial_id"]] = {"status": trial["status"], "last_result": runtime["last_result"]}
    return trials


def recorded(state: dict[str, dict]) -> tuple[set[str], set[str]]:
    """Trials the snapshot has as finished, and as running past their first checkpoint.

    A result past the checkpoint epoch (tune.checkpoint_every=2) means Tune had registered that
    checkpoint: a result that carries a checkpoint can be snapshotted just before its checkpoint is.
    """
    finished = {t for t, s in state.items() if s["status"] == "TERMINATED"}
    checkpointed = {
        t
        for t, s in state.items()
        if s["status"] == "RUNNING" and (s["last_result"] or {}).get("training_iteration", 0) > 2
    }
    return finished, checkpointed


def wait_for_free_cpus(ray, wait_s: float = 30.0) -> None:
    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed driver's trials still hold CPUs"
        time.sleep(0.2)


def test_killed_search_resumes_without_rerunning_finished_trials(ray_cluster, tmp_path, fake_run):
    run_dir = str(tmp_path)
    os.symlink(Path(fake_run, "manifest.parquet"), Path(run_dir, "manifest.parquet"))
    os.symlink(Path(fake_run, "features"), Path(run_dir, "features"))
    overrides = [*SPACE, "train.max_epochs=10", "tune.search=random", "tune.num_samples=4"]
    overrides += ["tune.scheduler=fifo", "tune.max_concurrent_trials=1"]
    args = [f"run_dir={run_dir}", *FIXED, *overrides]
    log = tmp_path / "driver.log"
    proc = start_driver(ray_cluster, "ecmf_ray.train.tune:run_tune", args, log)
    deadline = time.monotonic() + 180
    try:
        # Kill once a trial has finished and the next one has saved a checkpoint, as Tune recorded it.
        while not all(recorded(experiment_state(run_dir))):
            assert proc.poll() is None, f"the driver ended before it could be interrupted; {driver_log(log)}"
            assert time.monotonic() < deadline, (
                f"no finished and checkpointed trials within 180 s; {driver_log(log)}"
            )
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # What restore starts from: the last snapshot (it may be newer than the one polled above).
    state = experiment_state(run_dir)
    finished, checkpointed = recorded(state)
    assert finished and len(finished) < 4
    wait_for_free_cpus(ray_cluster)

    with pytest.raises(ValueError, match="tune.resume=true"):
        run_tune(config(run_dir, *overrides))
    result = run_tune(config(run_dir, *overrides, "tune.resume=true"))

    trials = pd.read_csv(Path(run_dir, "tune", "trials.csv")).set_index("trial_id")
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"} and result["errors"] == 0
    assert set(trials["epochs"]) == {10}
    dirs = trial_dirs(run_dir)
    for trial in finished:  # not rerun: one result per epoch, and the score they had
        assert iterations(dirs[trial]) == list(range(1, 11))
        assert trials.loc[trial, "cv_waf"] == pytest.approx(state[trial]["last_result"]["cv_waf"])
    for trial in checkpointed:
        # Ran once from epoch 1 (lines with iterations_since_restore == training_iteration; the trial's
        # actor may outlive the killed driver by an epoch), then continued from its checkpoint to the
        # end. A trial whose last epoch had run before the kill, unmarked as finished, has nothing left.
        results = [json.loads(line) for line in (dirs[trial] / "result.json").read_text().splitlines()]
        first = [
            r["training_iteration"]
            for r in results
            if r["iterations_since_restore"] == r["training_iteration"]
        ]
        resumed = [
            r["training_iteration"]
            for r in results
            if r["iterations_since_restore"] < r["training_iteration"]
        ]
        assert first == list(range(1, len(first) + 1))
        assert resumed or state[trial]["last_result"]["training_iteration"] == 10
        assert resumed == list(range(11 - len(resumed), 11)) and max(first + resumed) == 10
