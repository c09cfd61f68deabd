"""The ``tune`` job: a Ray Tune search over the fusion model's and training's hyperparameters.

Each trial trains all ``train.folds`` folds in one process, in lockstep
(:func:`ecmf_ray.train.loop.step_folds`), and reports once per epoch ``cv_waf``, the mean over
folds of each fold's best held-out WAF so far: the score ``ecmf train`` would report if training
stopped there. ASHA therefore compares trials on the same CV score at the same epoch. Folds,
standardisation, seeds and models are the train job's own, so a trial's ``cv_waf`` is what
``ecmf train`` gets with that config.

The first trial is always the starting config (the ``model:``/``train:`` values the search runs
with, :func:`ecmf_ray.train.search_space.start_point`), through the searcher's
``points_to_evaluate`` (random, Optuna) or as one grid point (grid), and ASHA never stops it early:
it trains for its full budget, as ``ecmf train`` would, so best.yaml is never worse than the start.

Files, under ``${run_dir}/tune/``:

===========  ===================================================================================
trials.csv   one row per trial: status, start (the starting config's trial), the searched values,
             cv_waf (best mean WAF), epochs, error
best.yaml    the best trial's searched ``model:``/``train:`` values, for ``ecmf train --config``;
             its header compares it with the start
search.yaml  the whole config the search ran with (profile and overrides), to train best.yaml with
ray/search/  Ray Tune's experiment state, trial checkpoints, and each trial's TensorBoard events
===========  ===================================================================================

``tune.resume=true`` continues an interrupted search (``Tuner.restore`` with ``resume_errored``):
finished trials keep their results, running ones continue from their latest checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.config import to_yaml
from ecmf_ray.features import feature_matrix
from ecmf_ray.freshness import read_record, stale_reason, write_record
from ecmf_ray.models import validate_model_config
from ecmf_ray.train.checkpoint import load_tensors, save_tensors
from ecmf_ray.train.data import FeatureSet, align_branch, load_feature_set
from ecmf_ray.train.distributed import experiment_fingerprint, run_config_storage
from ecmf_ray.train.loop import FoldRun, set_torch_threads, step_folds
from ecmf_ray.train.search_space import (
    AUDIO_KEY,
    build_param_space,
    decode_trial,
    is_start,
    param_point,
    searched_keys,
    start_point,
)

logger = logging.getLogger(__name__)

METRIC = "cv_waf"
EXPERIMENT = "search"
# train.experiment in best.yaml, so training the winner never collides with an existing experiment.
BEST_EXPERIMENT = "tuned"
AUDIO = "audio"

# An audio branch for one trial: (features, present), aligned with the FeatureSet's rows.
AudioFeatures = tuple[np.ndarray, np.ndarray]


def tune_dir(run_dir: str) -> str:
    return storage.join(run_dir, "tune")


def record_path(run_dir: str) -> str:
    return storage.join(tune_dir(run_dir), "search.json")


def search_settings(cfg: DictConfig) -> dict[str, Any]:
    """What decides a search's outcome: the tune settings (resources and resume aside) and the base experiment."""
    tune_cfg = OmegaConf.to_container(cfg.tune, resolve=True)
    operational = ("resume", "max_concurrent_trials", "cpus_per_trial", "gpus_per_trial", "checkpoint_every")
    base = experiment_fingerprint(cfg)
    base["train"].pop("experiment")
    return {"tune": {k: v for k, v in tune_cfg.items() if k not in operational}, "base": base}


def current(cfg: DictConfig) -> str | None:
    """None when ``tune/best.yaml`` exists and came from a search with the current settings; else why not."""
    if not storage.exists(storage.join(tune_dir(str(cfg.run_dir)), "best.yaml")):
        return "no tune/best.yaml yet"
    return stale_reason("tune/", read_record(record_path(str(cfg.run_dir))), search_settings(cfg))


def load_audio_features(video_ids: np.ndarray, uri: str) -> AudioFeatures:
    """One alternative audio feature folder (the feature-store format), aligned with ``video_ids``."""
    table = storage.read_table(uri)
    return align_branch(pd.Index(video_ids), table.column("video_id").to_pylist(), feature_matrix(table))


def trial_features(data: FeatureSet, branches: list[str], audio: AudioFeatures | None) -> FeatureSet:
    """``data`` restricted to ``branches`` (in that order), with ``audio`` as the audio branch if given."""
    columns = []
    for branch in branches:
        if branch == AUDIO and audio is not None:
            columns.append(audio)
        else:
            b = data.branches.index(branch)
            columns.append((data.features[b], data.present[:, b]))
    return replace(
        data,
        branches=tuple(branches),
        features=tuple(f for f, _ in columns),
        present=np.stack([p for _, p in columns], axis=1),
    )


def _save_runs(folder: str, runs: list[FoldRun]) -> None:
    for run in runs:
        save_tensors(os.path.join(folder, f"fold{run.fold}.safetensors"), *run.state())


def _load_runs(folder: str, runs: list[FoldRun]) -> None:
    for run in runs:
        run.load_state(*load_tensors(os.path.join(folder, f"fold{run.fold}.safetensors")))


def search_trial(
    config: dict[str, Any], data: FeatureSet, audio: dict[str, AudioFeatures], job: dict[str, Any]
) -> None:
    """Tune trial: every fold of one config in lockstep, one report (``cv_waf``) per epoch."""
    from ray import tune

    set_torch_threads(job["threads"])
    values = decode_trial(config, job["labels"])
    model_cfg = {**job["model"], **values["model"]}
    train_cfg = {**job["train"], **values["train"]}
    branches = validate_model_config(model_cfg)
    features = trial_features(data, branches, audio.get(values[AUDIO_KEY] or job["audio_default"]))
    device = "cuda" if job["gpus"] else "cpu"
    runs = [
        FoldRun(features, fold, model_cfg, train_cfg, job["seed"], device=device)
        for fold in range(features.n_folds)
    ]
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _load_runs(folder, runs)
    every = max(1, int(job["checkpoint_every"]))
    while not all(run.done for run in runs):
        summary = step_folds(runs)
        metrics = {METRIC: summary["cv_waf"], "val_waf": summary["val_waf"], "epoch": summary["epoch"]}
        if summary["done"] or summary["epoch"] % every == 0:
            with tempfile.TemporaryDirectory() as tmp:
                _save_runs(tmp, runs)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)


def trial_dirname(trial: Any) -> str:
    """Short trial folders (the default packs every searched value into the name): TensorBoard run names."""
    return f"trial_{trial.trial_id}"


def csv_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """List cells (branch sets) as ``[a, b]``, the form a ``key=value`` override takes."""
    return trials.map(lambda v: f"[{', '.join(map(str, v))}]" if isinstance(v, list) else v)


def _searcher(tune_cfg: DictConfig, seed: int, start: dict[str, Any]) -> Any:
    """The search algorithm, with the starting config as its first point."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    first = [param_point(start)]
    if tune_cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed, points_to_evaluate=first)
    if tune_cfg.search == "random":
        return BasicVariantGenerator(random_state=seed, points_to_evaluate=first)
    if tune_cfg.search == "grid":
        # A preset point would replace the grid; the start is one of its points already (build_param_space).
        return BasicVariantGenerator(random_state=seed)
    raise ValueError(f"tune.search must be random, grid or optuna, not {tune_cfg.search!r}")


def trial_concurrency(tune_cfg: DictConfig) -> int | None:
    """``max_concurrent_trials`` for Tune: the configured bound, or (null) every trial at once.

    Never what the cluster holds now: trials that do not fit wait in Tune's queue, and their pending
    resource requests are what make an autoscaler add nodes. Random and grid search already queue
    every trial (None); Optuna queues one trial at a time unless bounded, so it gets num_samples.
    """
    limit = tune_cfg.max_concurrent_trials
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"tune.max_concurrent_trials must be null or at least 1, got {limit}")
        return int(limit)
    return int(tune_cfg.num_samples) if tune_cfg.search == "optuna" else None


def _start_keeping_asha() -> type:
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class StartKeepingASHA(ASHAScheduler):
        """ASHA that never stops the starting config's trial early.

        The start's score is then its full-budget score, the one ``ecmf train`` would give, and every
        trial that survives ASHA to the end is compared with it at the same (full) budget; trials ASHA
        stops early only score lower or equal to what they would have shown later, so the best trial
        is at least as good as the start. Its results still fill ASHA's rungs, so it raises the bar
        for the others.
        """

        def __init__(self, start: dict[str, Any], **kwargs: Any):
            super().__init__(**kwargs)
            self.start = start

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            action = super().on_trial_result(tune_controller, trial, result)
            early = result.get(self._time_attr, 0) < self._max_t
            if action == TrialScheduler.STOP and early and is_start(trial.config, self.start):
                self._num_stopped -= 1
                return TrialScheduler.CONTINUE
            return action

    return StartKeepingASHA


def _scheduler(tune_cfg: DictConfig, max_epochs: int, start: dict[str, Any]) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    if tune_cfg.scheduler == "asha":
        return _start_keeping_asha()(
            start,
            time_attr="training_iteration",
            max_t=max_epochs,
            grace_period=int(tune_cfg.grace_period),
            reduction_factor=float(tune_cfg.reduction_factor),
        )
    if tune_cfg.scheduler == "fifo":
        return FIFOScheduler()
    raise ValueError(f"tune.scheduler must be asha or fifo, not {tune_cfg.scheduler!r}")


def _load_data(
    cfg: DictConfig, run_dir: str, searched: dict[str, list]
) -> tuple[FeatureSet, dict[str, AudioFeatures]]:
    """Every branch any trial may use, read once; alternative audio folders separately."""
    branch_sets = searched["model.branches"][1:] if "model.branches" in searched else [cfg.model.branches]
    wanted = list(dict.fromkeys(b for branches in branch_sets for b in branches))
    audio_dirs = list(cfg.tune.audio_features)
    base = [b for b in wanted if not (b == AUDIO and audio_dirs)]
    data = load_feature_set(run_dir, base, int(cfg.train.folds), int(cfg.seed), cfg.train.labels)
    audio = {d: load_audio_features(data.video_ids, storage.resolve(d, run_dir)) for d in audio_dirs}
    return data, audio


def _trial_rows(results: Any, labels: dict, start: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for result in results:
        values = decode_trial(result.config or {}, labels)
        metrics = result.metrics or {}
        row = {
            "trial_id": metrics.get("trial_id", os.path.basename(str(result.path))),
            "status": "ERROR" if result.error else "TERMINATED",
            "start": is_start(result.config or {}, start),
            **{f"{s}.{k}": v for s in ("model", "train") for k, v in values[s].items()},
        }
        if values[AUDIO_KEY] is not None:
            row[AUDIO_KEY] = values[AUDIO_KEY]
        row.update(
            {
                METRIC: metrics.get(METRIC),
                "epochs": metrics.get("training_iteration", 0),
                "error": str(result.error).splitlines()[0] if result.error else "",
            }
        )
        rows.append(row)
    trials = pd.DataFrame(rows).sort_values("trial_id", kind="stable")
    # A sampled trial may repeat the start's values (choices only); the first one created is the start.
    trials["start"] = trials["start"] & ~trials["start"].cumsum().gt(1)
    return trials.sort_values(METRIC, ascending=False, na_position="last", kind="stable")


def start_comparison(trials: pd.DataFrame) -> str:
    """How the best trial compares with the starting config's trial."""
    best = trials.dropna(subset=[METRIC]).iloc[0]
    start = trials[trials["start"]]
    if start.empty or pd.isna(start[METRIC].iloc[0]):
        return f"cv_waf {best[METRIC]:.4f}; the starting config's trial has no score"
    if bool(best["start"]):
        return f"cv_waf {best[METRIC]:.4f}: the starting config itself; no trial beat it"
    return f"cv_waf {best[METRIC]:.4f} vs {start[METRIC].iloc[0]:.4f} for the starting config"


def best_yaml(trials: pd.DataFrame, experiment: str, search_config: str) -> str:
    """The best trial's searched values as a config fragment ``ecmf train --config`` takes as is.

    ``search_config``: where the search's whole config is saved; trained with it first, best.yaml
    gets every setting the search used (profile, overrides) and replaces only what it searched.
    """
    best = trials.dropna(subset=[METRIC]).iloc[0]
    fragment: dict[str, dict[str, Any]] = {"model": {}, "train": {"experiment": experiment}}
    for name, value in best.items():
        section, _, key = str(name).partition(".")
        if section in fragment:
            fragment[section][key] = value.item() if hasattr(value, "item") else value
    header = [
        f"# Best trial {best['trial_id']} of the search ({best['epochs']} epochs): {start_comparison(trials)}.",
        f"# Use: ecmf train --config {search_config} --config best.yaml",
        "#   (the search's own config first; or repeat its --config files and overrides, e.g.",
        "#   ecmf train --config local --config best.yaml run_dir=...)",
    ]
    if AUDIO_KEY in best and isinstance(best[AUDIO_KEY], str):
        header.append(
            f"# Its audio features came from {best[AUDIO_KEY]}: "
            "put them at ${run_dir}/features/audio before training."
        )
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(fragment))


def run_tune(cfg: DictConfig) -> dict[str, Any]:
    """The ``tune`` job: search ``tune.space``, write trials.csv and best.yaml; returns the best trial.

    Needs a Ray session (:func:`ecmf_ray.runtime.init_ray`).
    """
    run_dir = storage.resolve(cfg.run_dir, os.getcwd())
    out_dir = tune_dir(run_dir)
    base = {s: OmegaConf.to_container(cfg[s], resolve=True) for s in ("model", "train")}
    searched = searched_keys(OmegaConf.to_container(cfg.tune.space, resolve=True), base)
    audio_features = list(cfg.tune.audio_features)
    start = start_point(searched, base, audio_features)
    param_space, labels = build_param_space(searched, str(cfg.tune.search), audio_features, start)
    if not param_space:
        raise ValueError("tune.space searches nothing: give at least one entry, or tune.audio_features")

    # Built before the (slow) feature read so that a typo in tune.search or tune.scheduler fails at once.
    search_alg, scheduler = (
        _searcher(cfg.tune, int(cfg.seed), start),
        _scheduler(cfg.tune, int(cfg.train.max_epochs), start),
    )
    trainable = _trainable(cfg, run_dir, searched, base, labels, audio_features)
    tuner = _tuner(cfg, run_dir, trainable, (param_space, search_alg, scheduler))
    search_config = storage.join(out_dir, "search.yaml")
    storage.write_text(search_config, to_yaml(cfg))
    results = tuner.fit()
    return _write_results(_trial_rows(results, labels, start), out_dir, search_config)


def _trainable(
    cfg: DictConfig,
    run_dir: str,
    searched: dict[str, Any],
    base: dict[str, Any],
    labels: dict,
    audio_features: list[str],
) -> Any:
    """:func:`search_trial` with the features read once, the job's fixed settings, and its resources."""
    from ray import tune

    data, audio = _load_data(cfg, run_dir, searched)
    job = {
        **base,
        "seed": int(cfg.seed),
        "labels": labels,
        "audio_default": audio_features[0] if audio_features else None,
        "threads": max(1, int(cfg.tune.cpus_per_trial)),
        "gpus": float(cfg.tune.gpus_per_trial),
        "checkpoint_every": int(cfg.tune.checkpoint_every),
    }
    return tune.with_resources(
        tune.with_parameters(search_trial, data=data, audio=audio, job=job),
        {"cpu": float(cfg.tune.cpus_per_trial), "gpu": float(cfg.tune.gpus_per_trial)},
    )


def _tuner(cfg: DictConfig, run_dir: str, trainable: Any, new_search: tuple[dict[str, Any], Any, Any]) -> Any:
    """The search's Tuner: the saved one when ``tune/`` holds a search and ``tune.resume`` is set, else a
    new one from ``new_search`` (param space, search algorithm, scheduler). Refuses a search whose
    settings changed, and a saved one that ``tune.resume`` does not ask for."""
    from ray import tune

    out_dir = tune_dir(run_dir)
    ray_dir = storage.join(out_dir, "ray")
    fs, experiment_path = _experiment_location(ray_dir)
    settings = search_settings(cfg)
    recorded = read_record(record_path(run_dir))
    if recorded is not None and (reason := stale_reason(out_dir, recorded, settings)):
        raise ValueError(f"{reason}; delete {out_dir} to search again, or use a new run_dir")
    write_record(record_path(run_dir), settings)
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=fs):
        if not cfg.tune.resume:
            raise ValueError(
                f"{out_dir} already holds a search: pass tune.resume=true to continue it, "
                "or delete that folder to start over"
            )
        # The saved experiment brings its own param space, search algorithm and scheduler; trials
        # take model:/train: values from this config, so resume with the config that started it.
        logger.info("resuming the search in %s", experiment_path)
        return tune.Tuner.restore(experiment_path, trainable, resume_errored=True, storage_filesystem=fs)
    if cfg.tune.resume:
        logger.info("no search to resume in %s; starting one", out_dir)
    param_space, search_alg, scheduler = new_search
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=search_alg,
            scheduler=scheduler,
            # The seed is fixed, so a grid point run twice gives the same score twice.
            num_samples=1 if cfg.tune.search == "grid" else int(cfg.tune.num_samples),
            max_concurrent_trials=trial_concurrency(cfg.tune),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
            **run_config_storage(ray_dir),
        ),
    )


def _write_results(trials: pd.DataFrame, out_dir: str, search_config: str) -> dict[str, Any]:
    """trials.csv and best.yaml from the trials' rows (best first); returns the job's summary."""
    storage.write_csv(csv_cells(trials), storage.join(out_dir, "trials.csv"))
    if trials[METRIC].isna().all():
        raise RuntimeError(f"every trial failed; see {storage.join(out_dir, 'trials.csv')}")
    storage.write_text(storage.join(out_dir, "best.yaml"), best_yaml(trials, BEST_EXPERIMENT, search_config))
    best = trials.iloc[0]
    logger.info("best trial %s: %s -> %s", best["trial_id"], start_comparison(trials), out_dir)
    started = trials[trials["start"]]
    return {
        "tune_dir": out_dir,
        "trials": len(trials),
        "errors": int((trials["status"] == "ERROR").sum()),
        "best_trial": str(best["trial_id"]),
        METRIC: float(best[METRIC]),
        "start_cv_waf": float(started[METRIC].iloc[0]) if not started.empty else None,
    }


def _experiment_location(ray_dir: str) -> tuple[Any, str]:
    """``(pyarrow filesystem or None, path)`` of the experiment folder, as Tuner.restore takes them."""
    settings = run_config_storage(ray_dir)
    return settings.get("storage_filesystem"), f"{settings['storage_path'].rstrip('/')}/{EXPERIMENT}"
