"""One way to start or join Ray for every job."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

logger = logging.getLogger(__name__)

# Variables every Ray worker must see the same way as the driver.
_PROPAGATED_ENV = ("AWS_ENDPOINT_URL", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")
# Where the job supervisor hands a submitted job's config (its runtime env included) to the driver
# (ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR in Ray 2.60).
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """True inside ``ray job submit`` or when the user points at a cluster with RAY_ADDRESS."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


def joins_a_cluster(cfg: Any) -> bool:
    """True where :func:`init_ray` joins a running cluster, False where it starts this machine's own."""
    return bool(cfg.ray.address) or in_ray_job()


def job_env_vars(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The env vars the submitted job's runtime env sets (``--runtime-env``); empty outside a job."""
    raw = environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return {}
    runtime_env = json.loads(raw).get("runtime_env") or {}
    return dict(runtime_env.get("env_vars") or {})


def worker_env_vars(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The driver's settings that workers must share, less those the job's runtime env already sets.

    Ray refuses to merge a job's runtime env with a ``ray.init(runtime_env=...)`` that sets the same
    variable, and the job's value reaches every worker anyway. A job value that contradicts the
    driver's (``storage.endpoint_url`` against the job's ``AWS_ENDPOINT_URL``) would split the driver
    from its workers, so it is an error.
    """
    from_job = job_env_vars(environ)
    env_vars = {}
    for key in _PROPAGATED_ENV:
        if key not in environ:
            continue
        if key not in from_job:
            env_vars[key] = environ[key]
        elif from_job[key] != environ[key]:
            raise ValueError(
                f"the job's runtime env sets {key}={from_job[key]!r} but this driver uses "
                f"{environ[key]!r} (from its config); set it in one place only"
            )
    return env_vars


def init_ray(cfg: DictConfig) -> Any:
    """Join the job's cluster (``ray job submit``, ``RAY_ADDRESS`` or ``ray.address``), else start a local one.

    A local cluster gets the config's CPU and GPU counts. ``local_mode`` is never used: it raises in Ray 2.60.
    """
    import ray

    from ecmf_ray.storage import use_endpoint

    use_endpoint(cfg.storage.endpoint_url)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if ray.is_initialized():
        return ray.get_runtime_context()
    if joins_a_cluster(cfg):
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
        logger.info("joining Ray cluster at %s", address)
        env_vars = worker_env_vars()
        runtime_env = {"env_vars": env_vars} if env_vars else None
        return ray.init(address=address, runtime_env=runtime_env, log_to_driver=cfg.ray.log_to_driver)
    logger.info("starting a local Ray cluster (cpus=%s, gpus=%s)", cfg.ray.num_cpus, cfg.ray.num_gpus)
    # address="local": a fresh cluster even if `ray start` left one running on this machine. No runtime
    # env: the cluster's processes inherit this environment (the settings above included), and a job
    # runtime env would leave unused the workers Ray starts in advance, one per CPU, and start new ones.
    return ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        num_gpus=cfg.ray.num_gpus,
        log_to_driver=cfg.ray.log_to_driver,
        include_dashboard=None,
    )
