"""The job table: each ``ecmf`` job's library function, whether it needs Ray, and its help line.

Both the command line (:mod:`ecmf_ray.cli`) and the pipeline (:mod:`ecmf_ray.pipeline`) run jobs
through this module, which imports neither of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from omegaconf import DictConfig

from ecmf_ray.config import save_config, to_yaml
from ecmf_ray.storage import use_endpoint

# job -> (``module:function`` taking the resolved config, whether it needs a Ray session, help).
JOBS: dict[str, tuple[str | None, bool, str]] = {
    "prepare": ("ecmf_ray.data.prepare:run_prepare", False, "build the manifest from MER2025 data or a CSV"),
    "extract": ("ecmf_ray.extract.pipeline:run_extract", True, "compute features with Ray Data"),
    "enrich": ("ecmf_ray.enrich.job:run_enrich", True, "LLM pseudo-labels, keywords and descriptions"),
    "train": ("ecmf_ray.train.distributed:run_train", True, "K-fold training of the fusion model"),
    "tune": ("ecmf_ray.train.tune:run_tune", True, "hyperparameter search with Ray Tune"),
    "finalize": ("ecmf_ray.finalize.job:run_finalize", True, "relabel, ensemble, submission and report"),
    "pipeline": ("ecmf_ray.pipeline:run_pipeline", True, "every stage in order"),
    "predict": ("ecmf_ray.predict:run_predict", True, "label new clips with a finished run's ensemble"),
    "review": ("ecmf_ray.review.server:run_review", False, "a local web page to decide the review queue"),
}


class UsageError(Exception):
    """A command that cannot run as given; printed without a traceback."""


def resolve_job(target: str) -> Callable[[DictConfig], dict]:
    """The function a ``module:function`` target names."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def run_job(job: str, cfg: DictConfig) -> dict:
    """Save the resolved config, join or start Ray if the job needs it, and run the job."""
    target, needs_ray, _ = JOBS[job]
    if target is None:
        raise UsageError(f"'ecmf {job}' is not yet available in this version")
    use_endpoint(cfg.storage.endpoint_url)  # before the config is saved to run_dir
    print(f"--- resolved config ({job}) ---\n{to_yaml(cfg)}---")
    print(f"config saved to {save_config(cfg, job)}")
    if needs_ray:
        from ecmf_ray.runtime import init_ray

        init_ray(cfg)
    return resolve_job(target)(cfg)
