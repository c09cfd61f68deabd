"""Losing a worker node mid-run, on a real multi-node cluster (`ray start` processes): its raylet is
SIGKILLed during `ecmf extract` (while the State API shows extraction work on it) and during
`ecmf train`; both jobs finish on the nodes left. The shard journal holds every video exactly once, and
the features and fold scores equal those of an uninterrupted run.

The runs are functions of their own (:func:`extract_run`, :func:`train_run`), so that
benchmarks/node_loss_bench.py can time the same jobs with no node lost; the tests always lose one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from ray_processes import BIN, REPO, RayProcesses, alive_nodes, cluster_env, state, wait_for, wait_for_head

from ecmf_ray import features
from ecmf_ray.config import load_config
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract.reference import run_sequential

sys.path.insert(0, str(REPO / "tests" / "train"))  # the training tests' synthetic feature store
from fake_features import SMALL, small_config, write_fake_run  # noqa: E402

ECMF = str(BIN / "ecmf")
BRANCHES = ("frame", "face", "audio", "text")
ENCODERS = ("ClipEncoder", "HubertEncoder", "RobertaEncoder")
EPOCHS = 200  # per fold in the training test
# Blocks and shards of 4 videos: many shards, so the node dies with work done, in flight and still to come.
EXTRACT_SMALL = (
    *(f"extract.{stage}.batch_size=4" for stage in ("decode", "clip", "hubert", "roberta")),
    "extract.write.videos_per_file=4",
)
TRAIN_SMALL = (*SMALL, "train.folds=2", f"train.max_epochs={EPOCHS}", "train.early_stopping_patience=null",
               "train.max_failures=1")  # fmt: skip
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


@dataclass
class ExtractRun:
    run_dir: Path
    seconds: float
    shards_before: int  # shards written when the node was lost
    in_flight: list[str]  # what the State API showed running on that node just before


def extraction_work_on(cluster: RayProcesses, node_id: str) -> list[str]:
    """What the extraction runs on a node now, from the State API: running tasks and live encoder actors."""
    tasks = state(cluster, "tasks", f"node_id={node_id}", "state=RUNNING")
    actors = state(cluster, "actors", f"node_id={node_id}", "state=ALIVE")
    encoders = [a["repr_name"] for a in actors if any(e in (a.get("repr_name") or "") for e in ENCODERS)]
    return [f"task {t['name']}" for t in tasks] + [f"actor {name}" for name in encoders]


def extract_run(cluster: RayProcesses, tmp: Path, lose_node: bool) -> ExtractRun:
    """`ecmf extract` of 40 synthetic clips on two 2-CPU worker nodes; with ``lose_node``, one of them is
    killed once the first shard is written and the State API shows extraction work on it."""
    synthesize(str(tmp / "mer"), 30, unlabeled=10, seed=5, duration_s=2.0)
    run = [f"run_dir={tmp / 'run'}", f"dataset.root={tmp / 'mer'}"]
    finish(ecmf(cluster, "prepare", *run, log=tmp / "prepare.log"), tmp / "prepare.log", 300)
    doomed, survivor = cluster.add_worker(num_cpus=2), cluster.add_worker(num_cpus=2)
    doomed_id = cluster.node_id(doomed)

    started = time.monotonic()
    extract = ecmf(cluster, "extract", *run, *EXTRACT_SMALL, log=tmp / "extract.log")
    shards = tmp / "run" / "features" / "_shards"
    wait_for(lambda: extract.poll() is None and any(shards.glob("*.parquet")), 600, 0.2, "the first shard")
    in_flight: list[str] = []
    if lose_node:
        in_flight = wait_for(
            lambda: extract.poll() is None and extraction_work_on(cluster, doomed_id), 300, 0.5,
            "extraction work on the node to lose",
        )  # fmt: skip
    shards_before = len(list(shards.glob("*.parquet")))
    if lose_node:
        lose_a_node(cluster, doomed)
    finish(extract, tmp / "extract.log", 900)
    seconds = time.monotonic() - started
    cluster.remember()
    for node in (survivor,) if lose_node else (survivor, doomed):
        cluster.stop_node(node)
    return ExtractRun(tmp / "run", seconds, shards_before, in_flight)


def uninterrupted_extract(run: ExtractRun, tmp: Path) -> Path:
    """The same clips, config and models, extracted one at a time in this process (no Ray, no loss)."""
    run_dir = tmp / "uninterrupted"
    run_dir.mkdir()
    shutil.copy(run.run_dir / "manifest.parquet", run_dir)
    run_sequential(load_config(["local"], [f"run_dir={run_dir}", *EXTRACT_SMALL]))
    return run_dir


def assert_journal_holds_each_video_once(run_dir: Path, videos: list[str]) -> None:
    """The journal itself, read as plain files: the index names each video exactly once, and no two
    shard files hold the same video (``consolidate`` would hide both kinds of double)."""
    index = pq.read_table(run_dir / "features" / "_shards.index.parquet").to_pandas()
    assert sorted(index["video_id"]) == sorted(videos), index[index["video_id"].duplicated(keep=False)]
    held = pd.concat(
        pq.read_table(path, columns=["video_id"]).to_pandas().assign(shard=path.name)
        for path in sorted((run_dir / "features" / "_shards").glob("*.parquet"))
    )
    twice = held[held["video_id"].duplicated(keep=False)].sort_values("video_id")
    assert twice.empty, f"videos in more than one shard file:\n{twice.to_string()}"
    assert set(held["shard"]) == set(index["shard"])


def assert_same_features(run_dir: Path, expected_dir: Path) -> None:
    """Every branch's vectors and every error row equal those of the run in ``expected_dir``."""
    for branch in BRANCHES:
        ids, matrix = features.load_branch(str(run_dir), branch)
        expected_ids, expected = features.load_branch(str(expected_dir), branch)
        order, expected_order = np.argsort(ids), np.argsort(expected_ids)
        assert [ids[i] for i in order] == [expected_ids[i] for i in expected_order], branch
        np.testing.assert_allclose(
            matrix[order], expected[expected_order], rtol=1e-4, atol=1e-5, err_msg=branch
        )
    columns = ["video_id", "branch", "error_type"]
    errors, expected_errors = (
        pd.read_parquet(features.errors_path(str(d)))[columns].sort_values(columns).reset_index(drop=True)
        for d in (run_dir, expected_dir)
    )
    pd.testing.assert_frame_equal(errors, expected_errors)


def test_extraction_survives_a_lost_node(head: RayProcesses, tmp_path: Path):
    run = extract_run(head, tmp_path, lose_node=True)
    print(f"\nextract with a lost node: {run.seconds:.0f} s; on that node before the kill: {run.in_flight}")
    manifest = pd.read_parquet(run.run_dir / "manifest.parquet")
    assert run.in_flight  # the node died with extraction work on it
    assert run.shards_before < len(manifest) // 4  # and mid-run: fewer shards than 4-video blocks
    assert_journal_holds_each_video_once(run.run_dir, manifest["video_id"].tolist())
    errors = pd.read_parquet(features.errors_path(str(run.run_dir)))
    lost = errors[errors["error_type"].str.contains("|".join(RAY_FAILURES))]
    assert lost.empty, lost.to_string()
    assert_same_features(run.run_dir, uninterrupted_extract(run, tmp_path))


@dataclass
class TrainRun:
    run_dir: str
    seconds: float
    metrics: dict
    output: str


def train_run(cluster: RayProcesses, tmp: Path, lose_node: bool) -> TrainRun:
    """`ecmf train`, 2 folds side by side on two 1-CPU worker nodes; with ``lose_node``, one node is killed
    once each fold has a checkpoint, and a replacement joins (what an autoscaler would bring)."""
    run_dir = str(tmp / "run")
    write_fake_run(run_dir, n_train=240, n_test=30, separation=4.0)
    # Each fold's start-up takes ~30 s on 2 cores, so the folds get enough epochs (~35 s) that both are
    # still training when the second one checkpoints.
    doomed = cluster.add_worker(num_cpus=1)
    cluster.add_worker(num_cpus=1)
    started = time.monotonic()
    train = ecmf(cluster, "train", f"run_dir={run_dir}", *TRAIN_SMALL, log=tmp / "train.log")
    exp_dir = Path(run_dir, "train", "ecmf")
    wait_for(
        lambda: train.poll() is None and len(list(exp_dir.glob("ray/fold*/checkpoint_manager_snapshot.json"))) == 2,
        600, 0.2, "a checkpoint of each fold",
    )  # fmt: skip
    assert not list(exp_dir.glob("folds/fold*/result.json")), (
        "a fold ended before the other began: no node to lose"
    )
    if lose_node:
        lose_a_node(cluster, doomed)
        cluster.add_worker(num_cpus=1)
    output = finish(train, tmp / "train.log", 900)
    seconds = time.monotonic() - started
    cluster.remember()
    return TrainRun(run_dir, seconds, json.loads((exp_dir / "metrics.json").read_text()), output)


def test_training_survives_a_lost_node_and_matches_an_uninterrupted_run(head: RayProcesses, tmp_path: Path):
    from ecmf_ray.train.data import load_feature_set
    from ecmf_ray.train.loop import cross_validate, set_torch_threads

    run = train_run(head, tmp_path, lose_node=True)
    print(f"\ntrain with a lost node: {run.seconds:.0f} s")
    resumed = [f for f in run.metrics["per_fold"] if f["resumed_from_epoch"] > 0]
    # The lost node's fold (and any fold whose trial ran there) went on from its last checkpoint.
    assert resumed, run.output[-3000:]
    assert all(0 < f["resumed_from_epoch"] < EPOCHS for f in resumed)

    # The same folds trained in this process without any loss give the same scores.
    cfg = small_config(run.run_dir, *TRAIN_SMALL)
    set_torch_threads(1)
    data = load_feature_set(run.run_dir, list(cfg.model.branches), 2, int(cfg.seed))
    runs = cross_validate(
        data, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.train), int(cfg.seed)
    )
    assert [f["waf"] for f in run.metrics["per_fold"]] == pytest.approx([r.best_waf for r in runs], abs=1e-9)
    assert [f["best_epoch"] for f in run.metrics["per_fold"]] == [r.best_epoch for r in runs]
