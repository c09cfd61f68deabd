"""The end-to-end pipeline and the demo."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data.prepare import run_prepare

logger = logging.getLogger(__name__)


def run_pipeline(cfg: DictConfig) -> dict:
    """prepare -> extract -> train, in one Ray session, each stage reading what the last one wrote."""
    from ecmf_ray.extract.pipeline import run_extract
    from ecmf_ray.train.distributed import run_train

    return {
        "prepare": run_prepare(cfg),
        "extract": run_extract(cfg),
        "train": run_train(cfg),
    }


def run_demo(cfg: DictConfig, *, n: int, unlabeled: int, label_noise: float) -> dict:
    """Synthesise a small MER2025-layout dataset under ``run_dir`` and run the pipeline on it."""
    from ecmf_ray.cli import run_job
    from ecmf_ray.data.synth import synthesize

    data_root = storage.join(cfg.run_dir, "synth")
    print(f"synthesising {n} labelled + {unlabeled} unlabelled videos into {data_root}")
    synthesize(data_root, n, unlabeled=unlabeled, label_noise=label_noise, seed=int(cfg.seed))
    cfg.dataset.format = "mer2025"
    cfg.dataset.root = data_root
    result = run_job("pipeline", cfg)
    print(f"demo finished: outputs under {cfg.run_dir}")
    return result
