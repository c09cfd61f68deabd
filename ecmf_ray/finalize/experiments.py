"""Finalize's training runs: a config with overrides, trained on the manifest's or on other labels.

Every run finalize starts (weak classifiers, ensemble members, ablation rows, the self-training round)
is a full K-fold ``train`` experiment (``train.labels`` for refined and pseudo-labels) named after a
hash of what decides its results (seed, model, train, the labels' content, the data): a rerun finds the
finished one, an edited variant trains afresh, and two roles with the same config (an ablation row and
an ensemble member) share one run. A finished experiment with the same fingerprint under any other name
(the pipeline's ``train/<train.experiment>``) is used as it is, and labels identical to the manifest's
are the manifest's, so the base config is trained once per run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ecmf_ray import storage
from ecmf_ray.config import ConfigError
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.train.data import label_table_digest, labels_of
from ecmf_ray.train.outputs import experiment_dir

logger = logging.getLogger(__name__)

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


def unnamed_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The experiment fingerprint without ``train.experiment`` (the name, not what is trained)."""
    from ecmf_ray.train.distributed import experiment_fingerprint

    content = experiment_fingerprint(cfg)
    content["train"].pop("experiment")
    return content


def experiment_name(cfg: DictConfig) -> str:
    digest = hashlib.sha1(json.dumps(unnamed_fingerprint(cfg), sort_keys=True).encode()).hexdigest()
    return f"{PREFIX}-{digest[:10]}"


def find_experiment(cfg: DictConfig) -> str | None:
    """The folder of a finished experiment under ``train/`` that trained exactly ``cfg``, under any name."""
    wanted = unnamed_fingerprint(cfg)
    train_dir = storage.join(str(cfg.run_dir), "train")
    for name in sorted(storage.listdir(train_dir)):
        exp_dir = experiment_dir(str(cfg.run_dir), name)
        record = storage.join(exp_dir, "experiment.json")
        if not (storage.exists(record) and storage.exists(storage.join(exp_dir, "metrics.json"))):
            continue
        found = json.loads(storage.read_text(record))
        found.get("train", {}).pop("experiment", None)
        if found == json.loads(json.dumps(wanted)):
            return exp_dir
    return None


def manifest_labels(run_dir: str) -> pd.Series:
    """video_id -> class of the manifest's labelled training videos."""
    manifest = read_manifest(manifest_path(run_dir))
    train = manifest[labels_of(manifest) >= 0]
    return pd.Series(train["label"].to_numpy(dtype=object), index=train["video_id"].astype(str).to_numpy())


def with_labels(cfg: DictConfig, labels: pd.Series | None) -> DictConfig:
    """``cfg`` training on ``labels`` (video_id -> class; None, empty or the manifest's own: the manifest's).

    The table is written once under ``final/labels/``, named by its content, and passed as ``train.labels``.
    """
    if labels is None or labels.empty:
        return cfg
    original = manifest_labels(str(cfg.run_dir))
    if labels.to_dict() == original.to_dict():
        return cfg  # e.g. relabeling changed nothing: the same run as on the manifest's labels
    table = labels.rename_axis("video_id").rename("label").reset_index()
    uri = storage.join(cfg.run_dir, "final", "labels", f"{label_table_digest(labels)}.parquet")
    if not storage.exists(uri):
        storage.write_table(table, uri)
    return with_overrides(cfg, [f"train.labels={uri}"], "finalize")


def train_experiment(cfg: DictConfig, labels: pd.Series | None = None) -> str:
    """Train ``cfg`` on ``labels`` as experiment :func:`experiment_name` (finished folds are kept); its folder.

    A finished experiment that trained the same (under any name) is used instead.
    """
    from ecmf_ray.train.distributed import run_train

    cfg = with_labels(cfg, labels)
    found = find_experiment(cfg)
    if found is not None:
        logger.info("finalize: reusing %s (the same seed, model, train settings, labels and data)", found)
        return found
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
