"""Losing a worker node mid-run, on a real multi-node cluster (`ray start` processes): its raylet is
SIGKILLed during `ecmf extract` and during `ecmf train`; both jobs finish on the nodes left, with
every video written once and the same fold scores as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from ray_processes import BIN, REPO, RayProcesses, alive_nodes, cluster_env, wait_for, wait_for_head

from ecmf_ray.data.synth import synthesize

sys.path.insert(0, str(REPO / "tests" / "train"))  # the training tests' synthetic feature store
from fake_features import SMALL, small_config, write_fake_run  # noqa: E402

ECMF = str(BIN / "ecmf")
BRANCHES = ("frame", "face", "audio", "text")
# benchmarks/README.md's baseline: the same runs with no node lost, timed with `-s`.
LOSE_A_NODE = os.environ.get("ECMF_BENCH_KEEP_NODES") != "1"
LOSS = "with a lost node" if LOSE_A_NODE else "with no node lost"
EPOCHS = 200  # per fold in the training test
# What Ray raises for lost work; none may end up as a video's error row.
RAY_FAILURES = ("Ray", "Actor", "Worker", "Node", "ObjectLost", "OwnerDied", "NotProcessed")


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayProcesses]:
    """A head with 0 CPUs, as on the cluster; each test adds (and loses) its own workers."""
    tmp = tmp_path_factory.mktemp("node_loss")
    cluster = RayProcesses(tmp, cluster_env(tmp))
    try:
        cluster.start_head()
        wait_for_head(cluster)
        yield cluster
    finally:
        cluster.stop()


def ecmf(cluster: RayProcesses, job: str, *overrides: str, log: Path) -> subprocess.Popen:
    """`ecmf JOB --config local ...` as a driver of its own that joins the cluster."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address}
    with open(log, "w") as out:
        return subprocess.Popen(
            [ECMF, job, "--config", "local", *overrides],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output[-5000:]
    return output


def lose_a_node(cluster: RayProcesses, group: int) -> None:
    nodes = len(alive_nodes(cluster))
    cluster.kill_node(group)
    wait_for(lambda: len(alive_nodes(cluster)) == nodes - 1, 120, 1, "Ray to mark the node dead")


def test_extraction_survives_a_lost_node(head: RayProcesses, tmp_path: Path):
    synthesize(str(tmp_path / "mer"), 30, unlabeled=10, seed=5, duration_s=2.0)
    run = [f"run_dir={tmp_path / 'run'}", f"dataset.root={tmp_path / 'mer'}"]
    prepare = ecmf(head, "prepare", *run, log=tmp_path / "prepare.log")
    finish(prepare, tmp_path / "prepare.log", 300)
    doomed, survivor = head.add_worker(num_cpus=2), head.add_worker(num_cpus=2)

    # Blocks and shards of 4 videos: many shards, so the node dies with work done, in flight and still to come.
    started = time.monotonic()
    small = [f"extract.{stage}.batch_size=4" for stage in ("decode", "clip", "hubert", "roberta")]
    extract = ecmf(
        head, "extract", *run, *small, "extract.write.videos_per_file=4", log=tmp_path / "extract.log"
    )
    shards = tmp_path / "run" / "features" / "_shards"
    wait_for(lambda: extract.poll() is None and any(shards.glob("*.parquet")), 600, 0.2, "the first shard")
    shards_before = len(list(shards.glob("*.parquet")))
    if LOSE_A_NODE:
        lose_a_node(head, doomed)
    output = finish(extract, tmp_path / "extract.log", 900)
    print(f"\nextract {LOSS}: {time.monotonic() - started:.0f} s")
    head.remember()

    manifest = pd.read_parquet(tmp_path / "run" / "manifest.parquet")
    assert shards_before < len(manifest) // 4  # the node died mid-run: fewer shards than 4-video blocks
    errors = pd.read_parquet(tmp_path / "run" / "features" / "errors.parquet")
    for branch in BRANCHES:
        features = pd.read_parquet(tmp_path / "run" / "features" / branch)
        failed = errors.loc[errors["branch"].eq(branch), "video_id"]
        written = pd.concat([features["video_id"], failed])
        assert written.is_unique, branch  # no video twice, as a feature or an error
        assert set(written) == set(manifest["video_id"]), branch  # and none missing
    lost = errors[errors["error_type"].str.contains("|".join(RAY_FAILURES))]
    assert lost.empty, lost.to_string()
    assert "extract:" in output
    for node in (survivor,) if LOSE_A_NODE else (survivor, doomed):
        head.stop_node(node)


def test_training_survives_a_lost_node_and_matches_an_uninterrupted_run(head: RayProcesses, tmp_path: Path):
    from ecmf_ray.train.data import load_feature_set
    from ecmf_ray.train.loop import cross_validate, set_torch_threads

    run_dir = str(tmp_path / "run")
    write_fake_run(run_dir, n_train=240, n_test=30, separation=4.0)
    # Two folds side by side, one per worker node. Each fold's start-up takes ~30 s on 2 cores, so the
    # folds get enough epochs (~35 s) that both are still training when the second one checkpoints.
    overrides = [f"run_dir={run_dir}", *SMALL, "train.folds=2", f"train.max_epochs={EPOCHS}",
                 "train.early_stopping_patience=null", "train.max_failures=1"]  # fmt: skip
    doomed = head.add_worker(num_cpus=1)
    head.add_worker(num_cpus=1)
    started = time.monotonic()
    train = ecmf(head, "train", *overrides, log=tmp_path / "train.log")
    exp_dir = Path(run_dir, "train", "ecmf")
    wait_for(
        lambda: train.poll() is None and len(list(exp_dir.glob("ray/fold*/checkpoint_manager_snapshot.json"))) == 2,
        600, 0.2, "a checkpoint of each fold",
    )  # fmt: skip
    assert not list(exp_dir.glob("folds/fold*/result.json")), (
        "a fold ended before the other began: no node to lose"
    )
    if LOSE_A_NODE:
        lose_a_node(head, doomed)
        head.add_worker(num_cpus=1)  # the replacement an autoscaler would bring
    output = finish(train, tmp_path / "train.log", 900)
    print(f"\ntrain {LOSS}: {time.monotonic() - started:.0f} s")
    head.remember()

    metrics = json.loads((exp_dir / "metrics.json").read_text())
    resumed = [f for f in metrics["per_fold"] if f["resumed_from_epoch"] > 0]
    # The lost node's fold (and any fold whose trial ran there) went on from its last checkpoint.
    assert bool(resumed) == LOSE_A_NODE, output[-3000:]
    assert all(0 < f["resumed_from_epoch"] < EPOCHS for f in resumed)

    # The same folds trained in this process without any loss give the same scores.
    cfg = small_config(run_dir, *overrides)
    set_torch_threads(1)
    data = load_feature_set(run_dir, list(cfg.model.branches), 2, int(cfg.seed))
    runs = cross_validate(
        data, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train), int(cfg.seed)
    )
    assert [f["waf"] for f in metrics["per_fold"]] == pytest.approx([r.best_waf for r in runs], abs=1e-9)
    assert [f["best_epoch"] for f in metrics["per_fold"]] == [r.best_epoch for r in runs]
