"""Finalize's training runs: a config with overrides, trained on the manifest's or on other labels.

Every run finalize starts (weak classifiers, ensemble members, ablation rows, the self-training round)
is a full K-fold ``train`` experiment (``train.labels`` for refined and pseudo-labels) named after a
hash of what decides its results (seed, model, train, the labels' content, the data): a rerun finds the
finished one, an edited variant trains afresh, and two roles with the same config (an ablation row and
an ensemble member) share one run. A finished experiment with the same fingerprint under any other name
(the pipeline's ``train/<train.experiment>``) is used as it is, and labels identical to the manifest's
are the manifest's, so the base config is trained once per run.

Finalize trains in waves (:func:`run_variants`): each wave's experiments are one batch of concurrent
trials over features loaded once for the whole finalize.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from ecmf_ray import storage
from ecmf_ray.config import ConfigError
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.train.data import label_table_digest, labels_of
from ecmf_ray.train.outputs import experiment_dir

if TYPE_CHECKING:
    from ecmf_ray.train.distributed import SharedFeatures

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


@dataclasses.dataclass(frozen=True)
class VariantRequest:
    """One experiment finalize needs: a name, config overrides, and its labels (None: the manifest's)."""

    name: str
    overrides: Sequence[str]
    labels: pd.Series | None = None


def run_variants(
    cfg: DictConfig, requests: Sequence[VariantRequest], shared: SharedFeatures | None, wave: str
) -> list[Experiment]:
    """Train (or find) every requested variant, all at once as one batch of trials; their outputs, in order.

    A finished experiment that trained the same (under any name) is used as it is; requests that train
    the same thing train once, as experiment :func:`experiment_name` (finished folds are kept).
    """
    from ecmf_ray.train.distributed import Batch, train_experiments

    variants = [
        with_labels(with_overrides(cfg, r.overrides, f"finalize variant '{r.name}'"), r.labels)
        for r in requests
    ]
    found = [find_experiment(v) for v in variants]
    to_train: dict[str, tuple[str, DictConfig]] = {}
    for request, variant, exp_dir in zip(requests, variants, found, strict=True):
        if exp_dir is not None:
            logger.info("finalize: %s reuses %s (the same seed, model, train settings, labels and data)",
                        request.name, exp_dir)  # fmt: skip
            continue
        name = experiment_name(variant)
        if name not in to_train:
            to_train[name] = (request.name, with_overrides(variant, [f"train.experiment={name}"], "finalize"))
    if to_train:
        batch = Batch(
            label=f"finalize {wave}",
            max_concurrent_folds=cfg.finalize.max_concurrent_folds or cfg.train.max_concurrent_folds,
            cap_key="finalize.max_concurrent_folds",
        )
        names, cfgs = zip(*to_train.values(), strict=True)
        train_experiments(list(cfgs), shared, batch, list(names))
    return [
        Experiment.read(r.name, exp_dir or experiment_dir(str(cfg.run_dir), experiment_name(v)))
        for r, v, exp_dir in zip(requests, variants, found, strict=True)
    ]
