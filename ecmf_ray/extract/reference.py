"""The sequential reference path: one clip at a time through the same stage functions, no Ray.

This is how the MER baselines extract (a loop over clips), kept for two reasons: the benchmark's
baseline, and a check that the Ray pipeline computes the same features (same decode, same crops, same
encoders; only the batching differs).
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from ecmf_ray.extract import resources, store
from ecmf_ray.extract.encoders import EncoderChain
from ecmf_ray.extract.journal import write_shard
from ecmf_ray.extract.media import decode_batch


def run_sequential(cfg: DictConfig, limit: int | None = None) -> dict:
    """Like :func:`ecmf_ray.extract.pipeline.run_extract`, as a plain loop over clips in this process.

    ``limit`` stops after that many clips without consolidating (used to pre-write a partial run).
    """
    cfg = resources.with_gpu_shares(cfg, joined=False)  # no Ray: the GPU is this machine's
    plan = store.plan_run(cfg)
    start = time.perf_counter()
    processed = 0
    for step in plan.passes:
        pass_cfg = store.pass_config(cfg, step.branches)
        encoders = EncoderChain(pass_cfg)
        todo = step.todo if limit is None else step.todo.head(max(limit - processed, 0))
        for block in store.input_blocks(todo, 1):
            batch = decode_batch({name: block[name].to_numpy() for name in block.columns}, pass_cfg)
            plan.record(write_shard(encoders(batch), cfg.run_dir, plan.digests(step.branches)))
        processed += len(todo)
    if limit is not None:
        return {"processed": processed}
    return store.finish_run(cfg, plan, processed, time.perf_counter() - start)
