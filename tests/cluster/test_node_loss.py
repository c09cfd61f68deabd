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
from typing import Any

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
# Blocks and shards of 4 videos: many of each, so the lost node holds some of the work and the rest goes on.
# A pool per encoder, as the GPU profiles run on clusters.
EXTRACT_SMALL = (
    "extract.encoder_pools=separate",
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


def work_by_node(cluster: RayProcesses, actor_classes: tuple[str, ...], tasks: bool) -> dict[str, list[str]]:
    """What runs on each node now, from the State API: live actors of ``actor_classes`` and (with
    ``tasks``) running tasks, by node id."""
    found: dict[str, list[str]] = {}
    for actor in state(cluster, "actors", ("state", "=", "ALIVE")):
        # Ray Data's pool actors are _MapWorker, named after their class in repr_name.
        name = actor.get("repr_name") or actor["class_name"]
        if any(c in f"{actor['class_name']} {name}" for c in actor_classes):
            found.setdefault(actor["node_id"], []).append(f"actor {name}")
    for task in state(cluster, "tasks", ("state", "=", "RUNNING")) if tasks else ():
        found.setdefault(task["node_id"], []).append(f"task {task['name']}")
    return found


def work_on_one_of(
    cluster: RayProcesses, groups: list[int], job: subprocess.Popen, log: Path, timeout: float, **what: Any
) -> tuple[int, list[str]]:
    """The first of ``groups`` (worker nodes) seen holding one of the run's actors (:func:`work_by_node`)
    while ``job`` runs, and its work: the node to lose. Fails at once, with the job's log, if the job
    ends first."""
    ids = {cluster.node_id(g): g for g in groups}
    polls: list[str] = []  # what each look found, by node: the failure message if none finds work in time
    started = time.monotonic()

    def busy() -> tuple[int, list[str]] | None:
        if job.poll() is not None:
            raise AssertionError(
                f"the job ended before work was seen on a worker node; looks: {polls}\n{log.read_text()[-3000:]}"
            )
        found = work_by_node(cluster, **what)
        counts = {str(node)[:8]: len(work) for node, work in found.items()}
        polls.append(f"{time.monotonic() - started:.0f}s {counts}")
        # A node holds the run's work once one of its actors is there (running tasks come and go too
        # fast to be the sign on their own, but are listed with it).
        return next(
            (
                (ids[n], work)
                for n, work in found.items()
                if n in ids and any(w.startswith("actor ") for w in work)
            ),
            None,
        )

    return wait_for(busy, timeout, 0.2, "work on a worker node")


def end_nodes(cluster: RayProcesses, groups: list[int], job: subprocess.Popen | None) -> None:
    """After a run, passed or failed: its driver (if still running) and the worker nodes it added, so that
    the next test on the shared head starts with none."""
    if job is not None and job.poll() is None:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    cluster.remember()
    for node in groups:
        cluster.stop_node(node)


# Run as a driver on the test cluster: a task on its node asks the State API for the nodes without an
# address, as Ray Train's PlacementGroupCleaner does; the second time with RAY_ADDRESS removed.
STATE_API_PROBE = """
import os, ray
from ray.util.state import list_nodes

@ray.remote(num_cpus=0)
def probe(keep_address):
    if not keep_address:
        os.environ.pop("RAY_ADDRESS", None)
    try:
        return str(len(list_nodes()))
    except ConnectionError as error:
        return str(error)

ray.init()
print(ray.get(probe.remote(True)), "|", ray.get(probe.remote(False)))
"""


def test_in_cluster_state_api_finds_its_cluster_beside_another(head: RayProcesses, ray_cluster):
    """With another Ray instance on the host (the session's test cluster), an address-less State API
    call from a worker fails (Ray 2.60 looks for the one instance on the host); then a dead Train
    controller's placement group is never freed and the node-loss runs below wait for CPUs for good.
    RayProcesses gives every node's processes the cluster's address, which is what makes it work."""
    env = {**head.env, "RAY_ADDRESS": head.gcs_address}
    result = subprocess.run(
        [sys.executable, "-c", STATE_API_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with_address, without = result.stdout.strip().splitlines()[-1].split(" | ")
    assert with_address == str(len(alive_nodes(head)))
    assert "multiple active Ray instances" in without  # the Ray behaviour the address works around


@dataclass
class ExtractRun:
    run_dir: Path
    seconds: float
    shards_before: int  # shards written when the node was lost
    in_flight: list[str]  # what the State API showed running on that node just before


def extract_run(cluster: RayProcesses, tmp: Path, lose_node: bool) -> ExtractRun:
    """`ecmf extract` of 40 synthetic clips on two 2-CPU worker nodes; with ``lose_node``, the first node the
    State API shows holding a loaded encoder (with the decoded clips queued for it) is killed.

    Not later: the encoders load their models while every clip is decoded, then encode and write all
    shards within seconds, too short a window to aim at from outside."""
    synthesize(str(tmp / "mer"), 30, unlabeled=10, seed=5, duration_s=2.0)
    run = [f"run_dir={tmp / 'run'}", f"dataset.root={tmp / 'mer'}"]
    finish(ecmf(cluster, "prepare", *run, log=tmp / "prepare.log"), tmp / "prepare.log", 300)
    workers, extract = [cluster.add_worker(num_cpus=2), cluster.add_worker(num_cpus=2)], None
    try:
        started = time.monotonic()
        log = tmp / "extract.log"
        extract = ecmf(cluster, "extract", *run, *EXTRACT_SMALL, log=log)
        shards = tmp / "run" / "features" / "_shards"
        in_flight: list[str] = []
        if lose_node:
            doomed, in_flight = work_on_one_of(
                cluster, workers, extract, log, 600, actor_classes=ENCODERS, tasks=True
            )
        shards_before = len(list(shards.glob("*.parquet")))
        if lose_node:
            lose_a_node(cluster, doomed)
        finish(extract, log, 900)
        return ExtractRun(tmp / "run", time.monotonic() - started, shards_before, in_flight)
    finally:
        end_nodes(cluster, workers, extract)


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
    assert run.in_flight  # the node died holding an encoder of the run
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
    in_flight: list[str]  # what the State API showed on the lost node just before


def train_run(cluster: RayProcesses, tmp: Path, lose_node: bool) -> TrainRun:
    """`ecmf train`, 2 folds side by side on two 1-CPU worker nodes; with ``lose_node``, once each fold has
    a checkpoint, a node the State API shows holding a fold's training worker is killed, and a
    replacement joins (what an autoscaler would bring)."""
    run_dir = str(tmp / "run")
    write_fake_run(run_dir, n_train=240, n_test=30, separation=4.0)
    # Each fold's start-up takes ~30 s on 2 cores, so the folds get enough epochs (~35 s) that both are
    # still training when the second one checkpoints.
    workers, train = [cluster.add_worker(num_cpus=1), cluster.add_worker(num_cpus=1)], None
    try:
        started = time.monotonic()
        log = tmp / "train.log"
        train = ecmf(cluster, "train", f"run_dir={run_dir}", *TRAIN_SMALL, log=log)
        exp_dir = Path(run_dir, "train", "ecmf")
        wait_for(
            lambda: train.poll() is None
            and len(list(exp_dir.glob("ray/fold*/checkpoint_manager_snapshot.json"))) == 2,
            600, 0.2, "a checkpoint of each fold",
        )  # fmt: skip
        assert not list(exp_dir.glob("folds/fold*/result.json")), (
            "a fold ended before the other began: no node to lose"
        )
        in_flight: list[str] = []
        if lose_node:
            doomed, in_flight = work_on_one_of(
                cluster, workers, train, log, 120, actor_classes=("RayTrainWorker",), tasks=False
            )
            lose_a_node(cluster, doomed)
            workers.append(cluster.add_worker(num_cpus=1))
        output = finish(train, log, 900)
        seconds = time.monotonic() - started
        metrics = json.loads((exp_dir / "metrics.json").read_text())
        return TrainRun(run_dir, seconds, metrics, output, in_flight)
    finally:
        end_nodes(cluster, workers, train)


def test_training_survives_a_lost_node_and_matches_an_uninterrupted_run(head: RayProcesses, tmp_path: Path):
    from ecmf_ray.train.data import load_feature_set
    from ecmf_ray.train.loop import cross_validate, set_torch_threads

    run = train_run(head, tmp_path, lose_node=True)
    print(f"\ntrain with a lost node: {run.seconds:.0f} s; on that node before the kill: {run.in_flight}")
    assert run.in_flight  # the node died holding a fold's training worker
    # Ray Train's helpers of every fold, dead ones too: no preemption watcher (train.preemption_watcher).
    helpers = {a["class_name"] for a in state(head, "actors")}
    assert "TrainController" in helpers and "PreemptionWatcher" not in helpers, helpers
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
