"""One way to start or join Ray for every job."""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

logger = logging.getLogger(__name__)

# Variables every Ray worker must see the same way as the driver.
_PROPAGATED_ENV = ("AWS_ENDPOINT_URL", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")


def in_ray_job() -> bool:
    """True inside ``ray job submit`` or when the user points at a cluster with RAY_ADDRESS."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


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
    env_vars = {k: os.environ[k] for k in _PROPAGATED_ENV if k in os.environ}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if cfg.ray.address or in_ray_job():
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
        logger.info("joining Ray cluster at %s", address)
        return ray.init(address=address, runtime_env=runtime_env, log_to_driver=cfg.ray.log_to_driver)
    logger.info("starting a local Ray cluster (cpus=%s, gpus=%s)", cfg.ray.num_cpus, cfg.ray.num_gpus)
    # address="local": a fresh cluster even if `ray start` left one running on this machine.
    return ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        num_gpus=cfg.ray.num_gpus,
        runtime_env=runtime_env,
        log_to_driver=cfg.ray.log_to_driver,
        include_dashboard=None,
    )
