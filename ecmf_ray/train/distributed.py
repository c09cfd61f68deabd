"""K-fold training on Ray: one Ray task per fold, each running one Ray Train ``TorchTrainer``.

Shape. The driver submits a task per fold (Ray's pattern for running several Train runs at once), at
most ``train.max_concurrent_folds`` at a time (default: as many as the cluster can ever hold,
:func:`fold_slots`; all of them where that is unknown). A task only drives its fold's trainer, so it
reserves no CPU (the trainer's controller takes none either): the fold's workers hold the resources
(``train.num_workers`` x ``train.cpus_per_worker`` / GPUs); folds that find no resources wait for
them, which is what makes an autoscaling cluster add nodes. A task lost with its node is run again
(``train.max_failures`` times) and its trainer resumes from the fold's latest checkpoint. One worker
per fold is the right size for these small models; several workers train with DDP. (Not Ray Tune
trials: a trial actor per fold cost ~5 CPU-seconds of start-up, a task reuses Ray's pooled workers,
and nothing here is searched.)

Batches. :func:`train_experiments` trains several experiments (finalize's weak classifiers, ensemble
members and ablation rows) as one batch of (experiment, fold) tasks, fold-major, so they run side by
side; ``train`` is a batch of one. Each fold's controller sends its reports to one queue of the batch,
which the driver reads for its progress lines (:mod:`ecmf_ray.train.progress`).

Data. The driver reads the manifest and every branch the batch needs once and puts them in the
object store once (:class:`SharedFeatures`); each worker takes its experiment's branches and labels
from that copy, and the workers of a node share it, zero-copy.

Storage and resume. Everything lives under ``${run_dir}/train/<experiment>/`` (see
:mod:`ecmf_ray.train.outputs`); Train state goes to its ``ray/`` folder through a pyarrow
filesystem, so s3:// works. Workers report metrics through ``ray.train.report`` every
``train.checkpoint_every`` epochs and when the fold stops; at most every ``train.checkpoint_interval_s``
seconds a report carries a safetensors training-state checkpoint (model and optimizer), and the best
epoch's weights, which change less often, are written beside the fold's results when they changed. A fold is
complete once its ``result.json`` exists. A rerun skips complete folds and trains the others; each of
their ``TorchTrainer`` runs has the same name and storage path as before, which makes Ray Train V2 hand
the worker its latest checkpoint.
Because every epoch re-seeds from (seed, fold, epoch), a resumed fold ends exactly where an
uninterrupted one would, and parallel and sequential runs agree.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.extract.spec import data_digest
from ecmf_ray.freshness import changed_keys, read_record, stale_reason
from ecmf_ray.models import validate_model_config
from ecmf_ray.train.checkpoint import load_tensors, save_tensors
from ecmf_ray.train.data import (
    FeatureSet,
    experiment_inputs,
    label_table_digest,
    load_feature_set,
    read_label_table,
)
from ecmf_ray.train.loop import FoldRun, set_torch_threads
from ecmf_ray.train.outputs import experiment_dir, fold_dir, fold_done, write_experiment, write_fold
from ecmf_ray.train.progress import FoldProgress

logger = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
_POLL_INTERVAL_S = 0.25
_FOLD_TASK_MEMORY_BYTES = 256 * 2**20
# Keys that change where and how fast folds run, not what they compute; free to change on resume.
SCHEDULING_KEYS = (
    "max_concurrent_folds",
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "gpus_per_worker",
    "checkpoint_every",
    "checkpoint_interval_s",
    "max_failures",
    "worker_start_timeout_s",
    "preemption_watcher",
)


def experiment_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """What decides an experiment's results: seed, model section, train section minus scheduling, data.

    ``train.labels`` is recorded by content, so a moved or rewritten label table is told apart; ``data``
    is the manifest's and the feature spec's hash, so features extracted again differently are too.
    """
    train = OmegaConf.to_container(cfg.train, resolve=True)
    if train["labels"]:
        train["labels"] = label_table_digest(read_label_table(str(train["labels"])))
    return {
        "seed": int(cfg.seed),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "train": {k: v for k, v in train.items() if k not in SCHEDULING_KEYS},
        "data": data_digest(str(cfg.run_dir)),
    }


def current(cfg: DictConfig) -> str | None:
    """None when ``train/<train.experiment>/`` is finished and was trained with this config on this data."""
    exp_dir = experiment_dir(str(cfg.run_dir), str(cfg.train.experiment))
    if not storage.exists(storage.join(exp_dir, "metrics.json")):
        return f"{exp_dir} is not finished"
    recorded = read_record(storage.join(exp_dir, "experiment.json"))
    return stale_reason(exp_dir, recorded, experiment_fingerprint(cfg))


def claim_experiment(exp_dir: str, fingerprint: dict[str, Any]) -> None:
    """Record the experiment's config, or refuse to resume it under a different one."""
    uri = storage.join(exp_dir, "experiment.json")
    if storage.exists(uri):
        previous = json.loads(storage.read_text(uri))
        if previous != fingerprint:
            changed = ", ".join(changed_keys(previous, fingerprint))
            raise ValueError(
                f"{exp_dir} holds an experiment with a different config (changed: {changed}; 'data' is the "
                "manifest and features); set another train.experiment, or delete that folder to start over"
            )
        return
    storage.write_text(uri, json.dumps(fingerprint, indent=1, sort_keys=True))


def best_weights_path(exp_dir: str, fold: int, epoch: int) -> str:
    return storage.join(fold_dir(exp_dir, fold), f"best-epoch{epoch}.safetensors")


def _report(
    run: FoldRun,
    metrics: dict[str, Any],
    rank: int,
    exp_dir: str,
    kept: list[int],
    written: dict[str, int],
    with_checkpoint: bool,
) -> None:
    """Report to Ray Train, with the fold's training state as a checkpoint when ``with_checkpoint``.

    The checkpoint (rank 0 writes it) holds the model and optimizer; the best epoch's weights go to their
    own file, written only when the best epoch changed since the last checkpoint. ``kept``: the best
    epochs whose files exist, oldest first. The controller may register a checkpoint after the worker
    moves on, so the file of the previous checkpoint's best epoch is kept too, and only older ones are
    dropped. ``written`` counts what rank 0 wrote (checkpoints, bytes, best-weights files).
    """
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            if not kept or kept[-1] != run.best_epoch:
                path = best_weights_path(exp_dir, run.fold, run.best_epoch)
                written["best_bytes"] += save_tensors(path, *run.best_weights())
                written["best_writes"] += 1
                kept.append(run.best_epoch)
            written["state_bytes"] += save_tensors(os.path.join(tmp, STATE_FILE), *run.state())
            written["reports"] += 1
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)
    while rank == 0 and len(kept) > 2:
        storage.remove(best_weights_path(exp_dir, run.fold, kept.pop(0)))


def utc_now() -> str:
    """Now, ISO 8601 in UTC to the millisecond (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def experiment_view(shared: FeatureSet, job: dict[str, Any]) -> FeatureSet:
    """One experiment's inputs from the shared features: its branches, labels and folds."""
    return replace(shared.select(job["branches"]), labels=job["labels"], folds=job["folds"])


def fold_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train one fold from its latest checkpoint (if any) until it stops."""
    import ray
    import ray.train
    import ray.train.torch

    started_at = utc_now()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    set_torch_threads(config["threads"])
    data = experiment_view(ray.get(config["data"][0]), config)
    train_cfg = config["train"]
    device = ray.train.torch.get_device() if train_cfg["use_gpu"] else "cpu"
    run = FoldRun(
        data, config["fold"], config["model"], train_cfg, config["seed"],
        device=device, rank=rank, world_size=world_size,
    )  # fmt: skip
    if world_size > 1:
        run.distribute(ray.train.torch.prepare_model)
    exp_dir, kept = config["exp_dir"], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            run.load_state(*load_tensors(os.path.join(folder, STATE_FILE)))
        best = best_weights_path(exp_dir, run.fold, run.best_epoch)
        if not storage.exists(best):
            raise FileNotFoundError(
                f"{best}: the best weights of fold {run.fold}'s latest checkpoint (epoch {run.epoch}) are gone; "
                f"delete {fold_dir(exp_dir, run.fold)} and {config['ray_dir']}/fold{run.fold} to train the fold afresh"
            )
        run.load_best(*load_tensors(best))
        kept.append(run.best_epoch)
        logger.info("fold %d resumes after epoch %d", run.fold, run.epoch)
    resumed_from = run.epoch
    written = {"reports": 0, "state_bytes": 0, "best_writes": 0, "best_bytes": 0}
    every = max(1, int(train_cfg["checkpoint_every"]))
    interval_s, last_checkpoint = float(train_cfg["checkpoint_interval_s"]), time.monotonic()
    while not run.done:
        metrics = run.step()
        # Each report waits for the controller's next poll, so report only every few epochs (the full
        # history goes to result.json anyway), and checkpoint at most every interval_s of training: a
        # checkpoint is the model and optimizer (11.9 MB at the paper's sizes). A finished fold needs none.
        if run.done or run.epoch % every == 0:
            due = not run.done and time.monotonic() - last_checkpoint >= interval_s
            _report(run, metrics, rank, exp_dir, kept, written, with_checkpoint=due)
            last_checkpoint = time.monotonic() if due else last_checkpoint
    if rank == 0:
        record = {
            "resumed_from_epoch": resumed_from,
            "started_at": started_at,
            "finished_at": utc_now(),
            "checkpoints": written,
        }
        write_fold(exp_dir, run, data, record)
        # The fold's model is in checkpoints/ now and a finished fold is never resumed: drop every best-weights
        # file (those left by an earlier, killed run too).
        folder = fold_dir(exp_dir, run.fold)
        for name in storage.listdir(folder):
            if name.startswith("best-epoch"):
                storage.remove(storage.join(folder, name))


def run_config_storage(uri: str) -> dict[str, Any]:
    """``storage_path`` (+ ``storage_filesystem`` for object stores) for a Ray RunConfig."""
    if not storage.is_remote(uri):
        return {"storage_path": uri}
    fs, path = storage.pyarrow_fs(uri)
    return {"storage_path": path, "storage_filesystem": fs}


def train_fold(task: tuple[int, int], jobs: list[dict[str, Any]], data: list[Any], reports: Any) -> None:
    """Ray task: train ``task`` (experiment index, fold) as a TorchTrainer.

    ``data``: the shared features' object reference, in a list so that Ray passes the reference;
    ``reports``: the batch's queue for the trainer's reports (:class:`ReportsToDriver`).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from ecmf_ray.train.reports import ReportsToDriver

    # The controller started below polls its workers (and so takes each report) every 2 s by
    # default, a long time next to an epoch of these small models; poll 4 times a second.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(_POLL_INTERVAL_S))
    experiment, fold = task
    job = jobs[experiment]
    train_cfg = job["train"]
    # Every fold is requested at once, so a fold may wait its turn for a CPU (or for an autoscaler's
    # node) far longer than Ray Train's 60 s default before its worker starts: waiting is not a failure.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(float(train_cfg["worker_start_timeout_s"]))
    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "1" if train_cfg["preemption_watcher"] else "0"
    resources = {"CPU": float(train_cfg["cpus_per_worker"])}
    if train_cfg["use_gpu"]:
        resources["GPU"] = float(train_cfg["gpus_per_worker"] or 1)
    trainer = TorchTrainer(
        fold_worker,
        train_loop_config={**job, "fold": fold, "data": data},
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(train_cfg["num_workers"]),
            use_gpu=bool(train_cfg["use_gpu"]),
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=f"fold{fold}",
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=int(train_cfg["max_failures"])),
            callbacks=[ReportsToDriver(reports, task)],
            **run_config_storage(job["ray_dir"]),
        ),
    )
    trainer.fit()


def fold_concurrency(
    max_concurrent_folds: int | None,
    n_folds: int,
    key: str = "train.max_concurrent_folds",
    slots: int | None = None,
) -> int:
    """How many fold tasks run at once: ``max_concurrent_folds``; when null, the ``slots`` the cluster can
    ever hold (where that is known), else every fold.

    Never what the cluster holds at the start: a cluster that autoscales from zero workers holds
    nothing then. Folds whose workers do not fit wait for resources, and their pending resource
    requests are what make an autoscaler add nodes.
    """
    if max_concurrent_folds is not None and int(max_concurrent_folds) < 1:
        raise ValueError(f"{key} must be null or at least 1, got {max_concurrent_folds}")
    return max(1, min(n_folds, int(max_concurrent_folds or slots or n_folds)))


def fold_slots(cfg: DictConfig) -> int | None:
    """How many folds the cluster can ever train at once, where that can be known; else None.

    A fold task reserves no CPU, so every task submitted starts, and each starts its trainer's
    processes (a few hundred MB each) to wait for a worker: 96 finalize folds at once would be
    ~200 idle processes on a laptop. Known: a cluster this process started (its CPUs). Unknown (None): a
    joined cluster, which may grow unseen.
    """
    from ecmf_ray import runtime
    from ecmf_ray.extract.resources import cluster_capacity

    capacity = cluster_capacity(bool(cfg.ray.address) or runtime.in_ray_job())
    per_fold = int(cfg.train.num_workers) * float(cfg.train.cpus_per_worker)
    if capacity is None or per_fold <= 0:
        return None
    return max(1, int(capacity.cpus // per_fold))


class SharedFeatures:
    """Every branch a batch of experiments needs, on the manifest's labels: read once, one object-store copy.

    Each experiment's trials take their branches from this one copy, zero-copy, with their own labels and
    folds (a few bytes per video, sent with the experiment's settings). Read on first use, so a finalize
    whose experiments are all found finished reads no features.
    """

    def __init__(self, run_dir: str, branches: list[str], n_folds: int, seed: int) -> None:
        self.run_dir, self.branches, self.n_folds, self.seed = run_dir, sorted(set(branches)), n_folds, seed

    @cached_property
    def data(self) -> FeatureSet:
        return load_feature_set(self.run_dir, self.branches, self.n_folds, self.seed)

    @cached_property
    def ref(self) -> Any:
        import ray

        return ray.put(self.data)


@dataclass(frozen=True)
class Batch:
    """What a batch of experiments is called in logs, and its fold cap."""

    label: str = "train"
    max_concurrent_folds: int | None = None
    cap_key: str = "train.max_concurrent_folds"
    slots: int | None = None  # what the cluster can ever hold (:func:`fold_slots`): the default cap


def run_fold_tasks(
    shared: SharedFeatures,
    jobs: list[dict[str, Any]],
    tasks: list[tuple[int, int]],
    batch: Batch,
    names: list[str],
) -> None:
    """Train ``tasks`` ((experiment, fold) pairs) as Ray tasks, in order, a bounded number at a time.

    Bounded by ``batch.max_concurrent_folds``, else by what the cluster can ever hold (``batch.slots``).
    A fold that fails does not stop the others; the first failure is raised once all have ended.
    """
    import ray
    from ray.exceptions import RayError
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    concurrency = fold_concurrency(batch.max_concurrent_folds, len(tasks), batch.cap_key, batch.slots)
    progress = FoldProgress(batch.label, tasks, names, max(int(j["train"]["max_epochs"]) for j in jobs))
    # The queue lives and dies with this driver's node, never with a worker node that may be lost.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    reports = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    # No CPU for the task (even 0.01 would leave K-0.01 CPUs, too few for K one-CPU workers), the memory
    # of the process that drives the trainer. A task lost with its node is run again (the trainer,
    # same name and storage, resumes from the fold's latest checkpoint): the same budget as Train's.
    fold_task = ray.remote(train_fold)
    options = {
        "num_cpus": 0,
        "memory": _FOLD_TASK_MEMORY_BYTES,
        "max_retries": int(jobs[0]["train"]["max_failures"]),
        "retry_exceptions": False,
    }
    # Every experiment's settings (labels and folds: a few bytes per video each) go to the object store
    # once; each task takes them from there (a top-level reference argument arrives as its value).
    jobs_ref = ray.put(jobs)
    waiting, running, failures = list(tasks), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < concurrency:
                task = waiting.pop(0)
                run = fold_task.options(**options, name=f"train_fold {tasks_label(names, task)}")
                running[run.remote(task, jobs_ref, [shared.ref], reports)] = task
            ended, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_INTERVAL_S)
            # Before the ended folds: a fold's reports are queued before its task returns.
            for task, metrics in reports.get_nowait_batch(reports.qsize()):
                progress.on_report(task, metrics)
            for ref in ended:
                task = running.pop(ref)
                try:
                    ray.get(ref)
                except RayError as error:
                    logger.error("%s: %s failed: %s", batch.label, tasks_label(names, task), error)
                    failures.append((task, error))
                progress.on_done(task)
    finally:
        reports.shutdown(force=True)
    if failures:
        failed = ", ".join(tasks_label(names, task) for task, _ in failures)
        raise RuntimeError(f"training failed for {failed}: {failures[0][1]}")


def tasks_label(names: list[str], task: tuple[int, int]) -> str:
    return f"{names[int(task[0])]} fold {int(task[1])}"


def fold_job(cfg: DictConfig, exp_dir: str, data: FeatureSet) -> dict[str, Any]:
    """The plain-dict settings every fold task and worker of one experiment gets (``data``: its inputs)."""
    train = OmegaConf.to_container(cfg.train, resolve=True)
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "train": train,
        "seed": int(cfg.seed),
        "exp_dir": exp_dir,
        "ray_dir": storage.join(exp_dir, "ray"),
        "threads": max(1, int(train["cpus_per_worker"])),
        "branches": list(data.branches),
        "labels": data.labels,
        "folds": data.folds,
    }


def train_experiments(
    cfgs: Sequence[DictConfig],
    shared: SharedFeatures | None = None,
    batch: Batch | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Train every experiment's unfinished folds together, as one batch of concurrent fold tasks.

    ``cfgs`` share run_dir; each names its experiment (``train.experiment``) and may have its own seed,
    folds and labels. ``shared``: features holding every branch they use (else read here). ``batch``:
    its label and fold cap (default: ``train``, capped by the first config's ``train.max_concurrent_folds``).
    Needs a Ray session. Returns each experiment's summary.
    """
    run_dir = storage.resolve(cfgs[0].run_dir, os.getcwd())
    plans = []
    for cfg in cfgs:
        if storage.resolve(cfg.run_dir, os.getcwd()) != run_dir:
            raise ValueError("experiments trained together must share run_dir")
        if int(cfg.train.num_workers) < 1:
            # num_workers=0 is Ray Train's local mode, which persists no checkpoints to resume from.
            raise ValueError("train.num_workers must be at least 1")
        branches = validate_model_config(cfg.model)
        exp_dir = experiment_dir(run_dir, str(cfg.train.experiment))
        claim_experiment(exp_dir, experiment_fingerprint(cfg))
        plans.append((cfg, exp_dir, branches))
    if shared is None:
        every = [b for _, _, branches in plans for b in branches]
        shared = SharedFeatures(run_dir, every, int(cfgs[0].train.folds), int(cfgs[0].seed))
    views = [
        experiment_inputs(shared.data, branches, int(cfg.train.folds), int(cfg.seed), cfg.train.labels)
        for cfg, _, branches in plans
    ]
    jobs = [fold_job(cfg, exp_dir, view) for (cfg, exp_dir, _), view in zip(plans, views, strict=True)]
    names = list(names or [os.path.basename(exp_dir) for _, exp_dir, _ in plans])
    # Fold-major: every experiment's first fold is asked for first, so experiments run side by side.
    tasks = [
        (e, fold)
        for fold in range(max(view.n_folds for view in views))
        for e, (job, view) in enumerate(zip(jobs, views, strict=True))
        if fold < view.n_folds and not fold_done(job["exp_dir"], fold)
    ]
    if tasks:
        batch = replace(
            batch or Batch(max_concurrent_folds=cfgs[0].train.max_concurrent_folds), slots=fold_slots(cfgs[0])
        )
        logger.info(
            "%s: training %d fold(s) of %d experiment(s): %s",
            batch.label,
            len(tasks),
            len(plans),
            ", ".join(names),
        )
        run_fold_tasks(shared, jobs, tasks, batch, names)
    summaries = []
    for (cfg, exp_dir, branches), view in zip(plans, views, strict=True):
        extra = {"experiment": str(cfg.train.experiment), "model": str(cfg.model.name), "branches": branches}
        metrics = write_experiment(exp_dir, view, extra=extra)
        logger.info("cv_waf %.4f ± %.4f -> %s", metrics["cv_waf"]["mean"], metrics["cv_waf"]["std"], exp_dir)
        summaries.append(
            {"experiment_dir": exp_dir, "cv_waf": metrics["cv_waf"], "per_fold": metrics["per_fold"]}
        )
    return summaries


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """The ``train`` job: K-fold training of ``model.name`` on ``${run_dir}``'s features.

    Needs a Ray session (:func:`ecmf_ray.runtime.init_ray`). Returns cv_waf, per-fold scores and
    the experiment folder.
    """
    return train_experiments([cfg])[0]
