"""The ``extract`` job: one streaming Ray Data pipeline from the manifest to the feature store.

::

    manifest rows ─▶ decode+faces (CPU tasks) ─▶ CLIP pool ─▶ HuBERT pool ─▶ RoBERTa pool
                 ─▶ write (CPU tasks: a shard per up to extract.write.videos_per_file videos) ─▶ driver: journal

Each encoder is its own actor pool (``ActorPoolStrategy``), sized and placed on its own; the model loads
once per actor. CLIP runs first because it drops the largest columns (the crops), so later stages move only
vectors, audio and text. With ``extract.encoder_pools: one`` (the CPU-only local profile) a single pool's
actors hold all three models instead (:class:`~ecmf_ray.extract.encoders.EncoderChain`): separate pools
buy nothing on cores they all share, and each costs a process that imports torch and transformers.
The write tasks store each group of finished videos as an atomic shard (see :mod:`ecmf_ray.extract.journal`)
and pass on only their ids, which the driver records in the journal while Ray Data keeps streaming; at
the end the driver consolidates the shards into ``features/<branch>/`` and ``errors.parquet``
(:mod:`ecmf_ray.extract.store`). The graph holds only the branches its videos lack: after a changed
``extract.hubert.layers`` it is decode ─▶ HuBERT ─▶ write.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from omegaconf import DictConfig

from ecmf_ray import runtime
from ecmf_ray.extract import journal, resources, store
from ecmf_ray.extract.encoders import ENCODERS, EncoderChain
from ecmf_ray.extract.media import decode_batch
from ecmf_ray.stall import stall_guarded_batches

logger = logging.getLogger(__name__)


def _memory(memory_mb: int) -> dict[str, int]:
    """Ray's ``memory`` reservation (bytes) for a stage; none for 0."""
    return {"memory": int(memory_mb) * 2**20} if int(memory_mb) > 0 else {}


def check_cluster(cfg: DictConfig) -> None:
    """Fail now, not hang, if the encoder pools' minimum actors can never be placed on this cluster.

    On a joined cluster whose growth cannot be seen, a shortfall now is only logged: an autoscaler may
    still add the GPU nodes.
    """
    capacity = resources.cluster_capacity(runtime.joins_a_cluster(cfg))
    if capacity is not None:
        resources.check_pools_fit(cfg, capacity)
        return
    try:
        resources.check_pools_fit(cfg, resources.live_capacity())
    except resources.PoolsDoNotFit as err:
        logger.warning("%s; waiting for the cluster to grow (an autoscaler launches nodes on demand)", err)


def _actor_stage(ds: Any, pool: resources.EncoderPool, cfg: DictConfig) -> Any:
    import ray.data

    # A pool of one encoder runs its class, so the dashboard names it (MapBatches(ClipEncoder)).
    encoder = ENCODERS[pool.encoders[0]] if len(pool.encoders) == 1 else EncoderChain
    return ds.map_batches(
        encoder,
        fn_constructor_kwargs={"cfg": cfg, "num_threads": max(1, int(pool.num_cpus))},
        compute=ray.data.ActorPoolStrategy(min_size=pool.pool_min, max_size=pool.pool_max),
        batch_size=pool.batch_size,
        batch_format="numpy",
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
        **_memory(int(pool.memory_mb)),
        udf_modifying_row_count=False,
    )


def build_dataset(cfg: DictConfig, todo: Any, digests: dict[str, str]) -> Any:
    """The lazy Ray Data graph over ``todo`` (``video_id, video_path, text`` rows), for the branches of
    ``cfg.extract.branches``; ``digests`` (branch -> spec digest) goes into each shard's journal rows."""
    import ray.data

    e = cfg.extract
    ds = ray.data.from_pandas(store.input_blocks(todo, int(e.decode.batch_size)))
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"cfg": cfg},
        batch_size=None,  # one task per input block
        batch_format="numpy",
        num_cpus=float(e.decode.num_cpus),
        # Reserving memory also keeps Ray Data from fusing this stage into the CLIP actors (it fuses a
        # task stage into the next actor stage when their remote args match), which would serialise
        # decoding inside the (GPU) encoder pool.
        **_memory(max(1, int(e.decode.memory_mb))),
        udf_modifying_row_count=False,
    )
    for pool in resources.encoder_pools(cfg):
        ds = _actor_stage(ds, pool, cfg)
    # A shard per batch: Ray Data bundles finished blocks up to videos_per_file rows and cuts each bundle's
    # remainder into a smaller batch, so a shard holds up to videos_per_file videos. Not a strict
    # ds.repartition first (exact shards): its tasks reserve one CPU each, which Ray Data's resource
    # reservation keeps for them, on 2 CPUs half the cluster, and decoding then ran one task at a time.
    # A cap on the write tasks too: Ray Data hands the CPU budget no stage reserved to the most downstream
    # stage without a cap first, and the idle write stage would hold it while decoding waits.
    return ds.map_batches(
        journal.write_shard,
        fn_kwargs={"run_dir": cfg.run_dir, "digests": digests},
        batch_size=int(e.write.videos_per_file),
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=int(e.write.max_tasks)),
        num_cpus=float(e.write.num_cpus),
        **_memory(e.write.memory_mb),
        udf_modifying_row_count=False,
    )


def run_extract(cfg: DictConfig) -> dict:
    """Extract every manifest video not yet written, then consolidate; returns the summary.

    Expects Ray to be up (the CLI calls :func:`ecmf_ray.runtime.init_ray` first).
    """
    import ray.data

    # The write stage's task cap is a most, not a wish: Ray Data's warning (in the driver, where its
    # executor runs) of a run with fewer blocks than the cap is noise.
    warnings.filterwarnings(
        "ignore",
        message=r"The maximum number of concurrent tasks for 'MapBatches\(write_shard\)'",
        category=UserWarning,
    )
    cfg = resources.with_gpu_shares(cfg, runtime.joins_a_cluster(cfg))
    plan = store.plan_run(cfg)
    logger.info("extract: %d videos to process, %d already written", plan.todo, plan.resumed)
    ray.data.DataContext.get_current().enable_progress_bars = True
    start = time.perf_counter()
    processed = 0

    def progress() -> tuple[int, int]:
        return plan.resumed + processed, len(plan.video_ids)

    for step in plan.passes:
        print(f"extract: {len(step.todo)} videos, branches {', '.join(step.branches)}")
        pass_cfg = store.pass_config(cfg, step.branches)
        check_cluster(pass_cfg)
        ds = build_dataset(pass_cfg, step.todo, plan.digests(step.branches))
        for written in stall_guarded_batches(ds, "extract", float(cfg.extract.stall_timeout_s), progress):
            plan.record(written)
            processed += len(written)
    return store.finish_run(cfg, plan, processed, time.perf_counter() - start)
