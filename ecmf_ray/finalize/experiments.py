"""Finalize's training runs: a config with overrides, trained on the manifest's or on other labels.

Every run finalize starts (weak classifiers, ensemble members, ablation rows, the self-training round)
is a full K-fold ``train`` experiment named after a hash of what decides its results (seed, model,
train, labels): a rerun finds the finished one, an edited variant trains afresh, and two roles with
the same config (an ablation row and an ensemble member) share one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ecmf_ray import storage
from ecmf_ray.config import ConfigError
from ecmf_ray.labels import EMOTION_INDEX
from ecmf_ray.train.data import FeatureSet
from ecmf_ray.train.folds import assign_folds

logger = logging.getLogger(__name__)

PREFIX = "final"


@dataclasses.dataclass(frozen=True)
class Labels:
    """Labels that replace the manifest's for one run (None: the manifest's own).

    ``train``: video_id -> class for the labelled training videos (refined labels). ``pseudo``:
    video_id -> class for test/unlabelled videos that join training only (never a validation fold).
    """

    train: pd.Series | None = None
    pseudo: pd.Series | None = None

    @property
    def is_manifest(self) -> bool:
        return self.train is None and self.pseudo is None

    def digest(self) -> str | None:
        """A short hash of the labels, recorded in the experiment's fingerprint."""
        if self.is_manifest:
            return None
        parts = [s.sort_index().to_json() if s is not None else "" for s in (self.train, self.pseudo)]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


MANIFEST_LABELS = Labels()


def with_overrides(cfg: DictConfig, overrides: Sequence[str], source: str) -> DictConfig:
    """A copy of ``cfg`` with ``key=value`` overrides; an unknown key names ``source``."""
    out = cfg.copy()
    OmegaConf.set_struct(out, True)
    for item in overrides:
        if "=" not in str(item):
            raise ConfigError(f"{source}: override '{item}' is not of the form key=value")
        try:
            out = OmegaConf.merge(out, OmegaConf.from_dotlist([str(item)]))
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise ConfigError(f"{source}: unknown config key '{getattr(err, 'full_key', err)}'") from None
    return out


def fingerprint(cfg: DictConfig, labels: Labels) -> dict[str, Any]:
    from ecmf_ray.train.distributed import experiment_fingerprint

    # Labels only when replaced, so a manifest-label run matches what `ecmf train` records.
    return {**experiment_fingerprint(cfg), **({"labels": labels.digest()} if not labels.is_manifest else {})}


def experiment_name(cfg: DictConfig, labels: Labels) -> str:
    content = fingerprint(cfg, labels)
    content["train"].pop("experiment")  # the name being chosen
    digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"{PREFIX}-{digest[:10]}"


def relabelled(data: FeatureSet, labels: Labels, n_folds: int, seed: int) -> FeatureSet:
    """``data`` with ``labels`` in place of the manifest's; folds re-drawn from the new training labels."""
    ids = pd.Index(data.video_ids)
    y = data.labels.copy()
    if labels.train is not None:
        rows = ids.get_indexer(labels.train.index)
        if (rows < 0).any() or (data.labels[rows] < 0).any():
            raise ValueError("refined labels name videos that are not labelled training videos")
        y[rows] = labels.train.map(EMOTION_INDEX).to_numpy()
    folds = assign_folds(y, n_folds, seed)
    if labels.pseudo is not None:
        rows = ids.get_indexer(labels.pseudo.index)
        if (rows < 0).any() or (folds[rows] >= 0).any():
            raise ValueError("pseudo-labels name videos that are not test or unlabelled videos")
        y[rows] = labels.pseudo.map(EMOTION_INDEX).to_numpy()  # folds stay -1: training rows only
    return dataclasses.replace(data, labels=y.astype(np.int64), folds=folds)


def train_experiment(cfg: DictConfig, labels: Labels = MANIFEST_LABELS) -> str:
    """Train ``cfg`` as experiment :func:`experiment_name` (skipping finished folds); its folder.

    Manifest labels: exactly ``ecmf train``. Other labels: the same steps on a relabelled feature set,
    since ``run_train`` reads labels from the manifest only.
    """
    from ecmf_ray.models import validate_model_config
    from ecmf_ray.train.data import load_feature_set
    from ecmf_ray.train.distributed import claim_experiment, fold_job, run_folds, run_train
    from ecmf_ray.train.outputs import experiment_dir, fold_done, write_experiment

    cfg = with_overrides(cfg, [f"train.experiment={experiment_name(cfg, labels)}"], "finalize")
    if labels.is_manifest:
        return run_train(cfg)["experiment_dir"]
    run_dir = storage.resolve(cfg.run_dir, os.getcwd())
    branches = validate_model_config(cfg.model)
    exp_dir = experiment_dir(run_dir, str(cfg.train.experiment))
    claim_experiment(exp_dir, fingerprint(cfg, labels))
    n_folds, seed = int(cfg.train.folds), int(cfg.seed)
    data = relabelled(load_feature_set(run_dir, branches, n_folds, seed), labels, n_folds, seed)
    todo = [fold for fold in range(data.n_folds) if not fold_done(exp_dir, fold)]
    if todo:
        run_folds(data, todo, fold_job(cfg, exp_dir))
    extra = {"experiment": str(cfg.train.experiment), "model": str(cfg.model.name), "branches": branches}
    metrics = write_experiment(exp_dir, data, extra=extra)
    logger.info("cv_waf %.4f on replaced labels -> %s", metrics["cv_waf"]["mean"], exp_dir)
    return exp_dir


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A finished experiment's outputs, as finalize reads them."""

    name: str
    exp_dir: str
    metrics: dict[str, Any]
    oof: pd.DataFrame
    test: pd.DataFrame

    @classmethod
    def read(cls, name: str, exp_dir: str) -> Experiment:
        return cls(
            name=name,
            exp_dir=exp_dir,
            metrics=json.loads(storage.read_text(storage.join(exp_dir, "metrics.json"))),
            oof=storage.read_table(storage.join(exp_dir, "oof.parquet")).to_pandas(),
            test=storage.read_table(storage.join(exp_dir, "test_pred.parquet")).to_pandas(),
        )

    @property
    def cv_waf(self) -> float:
        return float(self.metrics["cv_waf"]["mean"])


def run_variant(cfg: DictConfig, name: str, overrides: Sequence[str], labels: Labels) -> Experiment:
    """Train (or find) ``cfg`` + ``overrides`` on ``labels`` and read its outputs."""
    variant = with_overrides(cfg, overrides, f"finalize variant '{name}'")
    return Experiment.read(name, train_experiment(variant, labels))
