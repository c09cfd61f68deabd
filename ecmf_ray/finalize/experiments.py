"""Finalize's training runs: a config with overrides, trained on the manifest's or on other labels.

Every run finalize starts (weak classifiers, ensemble members, ablation rows, the self-training round)
is a full K-fold ``train`` experiment (``train.labels`` for refined and pseudo-labels) named after a
hash of what decides its results (seed, model, train, the labels' content): a rerun finds the finished
one, an edited variant trains afresh, and two roles with the same config (an ablation row and an
ensemble member) share one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ecmf_ray import storage
from ecmf_ray.config import ConfigError
from ecmf_ray.train.data import label_table_digest

PREFIX = "final"


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


def experiment_name(cfg: DictConfig) -> str:
    from ecmf_ray.train.distributed import experiment_fingerprint

    content = experiment_fingerprint(cfg)
    content["train"].pop("experiment")  # the name being chosen
    digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"{PREFIX}-{digest[:10]}"


def with_labels(cfg: DictConfig, labels: pd.Series | None) -> DictConfig:
    """``cfg`` training on ``labels`` (video_id -> class; None or empty: the manifest's).

    The table is written once under ``final/labels/``, named by its content, and passed as ``train.labels``.
    """
    if labels is None or labels.empty:
        return cfg
    table = labels.rename_axis("video_id").rename("label").reset_index()
    uri = storage.join(cfg.run_dir, "final", "labels", f"{label_table_digest(labels)}.parquet")
    if not storage.exists(uri):
        storage.write_table(table, uri)
    return with_overrides(cfg, [f"train.labels={uri}"], "finalize")


def train_experiment(cfg: DictConfig, labels: pd.Series | None = None) -> str:
    """Train ``cfg`` on ``labels`` as experiment :func:`experiment_name` (finished folds are kept); its folder."""
    from ecmf_ray.train.distributed import run_train

    cfg = with_labels(cfg, labels)
    cfg = with_overrides(cfg, [f"train.experiment={experiment_name(cfg)}"], "finalize")
    return run_train(cfg)["experiment_dir"]


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


def run_variant(cfg: DictConfig, name: str, overrides: Sequence[str], labels: pd.Series | None) -> Experiment:
    """Train (or find) ``cfg`` + ``overrides`` on ``labels`` and read its outputs."""
    variant = with_overrides(cfg, overrides, f"finalize variant '{name}'")
    return Experiment.read(name, train_experiment(variant, labels))
