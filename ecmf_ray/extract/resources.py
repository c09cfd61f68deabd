"""What the extraction stages reserve, and whether their minimum pools can ever start on the cluster.

Ray Data starts every actor pool's ``pool_min`` actors when the run starts and, by default, waits for
them without a deadline (``DataContext.wait_for_min_actors_s = -1``): a pool whose actors cannot be
placed on any node the cluster has, or can get from its autoscaler, makes the run hang with no error.
:func:`check_pools_fit` turns that into a clear error before anything starts.

A fractional ``num_gpus`` is a share of one physical GPU (Ray places such an actor on a single GPU with
that much left); whole numbers take whole GPUs of one node. So fitting the pools is bin packing of the
actors' shares into the GPUs of each node, not a comparison of sums. A pool may leave its share to be
derived (``num_gpus: null``) from the GPU memory it needs (``gpu_memory_gb``) and the GPU it runs on
(:func:`with_gpu_shares`), so that one profile fits a 24 GB card and an 80 GB one.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

logger = logging.getLogger(__name__)

ENCODER_STAGES: tuple[tuple[str, frozenset[str]], ...] = (
    ("clip", frozenset({"frame", "face"})),
    ("hubert", frozenset({"audio"})),
    ("roberta", frozenset({"text"})),
)


class PoolsDoNotFit(RuntimeError):
    """The encoder pools' minimum actors cannot be placed on the cluster: the run would wait forever."""


@dataclass(frozen=True)
class Capacity:
    """GPUs per node (one entry per node), and CPUs and memory in all."""

    node_gpus: tuple[float, ...]
    cpus: float
    memory_mb: float
    source: str  # where the figures come from, for the error message


def encoder_stages(cfg: Any) -> list[str]:
    """The encoders this run loads, in pipeline order (an encoder runs when any of its branches is extracted)."""
    branches = set(cfg.extract.branches)
    return [name for name, needs in ENCODER_STAGES if needs & branches]


# What one pool holding several encoders (extract.encoder_pools: one) takes from their settings: each actor
# reserves what one actor of each separate pool would; batching and pool size are the first encoder's.
SUMMED_FIELDS = ("num_cpus", "num_gpus", "memory_mb")
FIRST_ENCODER_FIELDS = ("batch_size", "pool_min", "pool_max")


@dataclass(frozen=True)
class EncoderPool:
    """One actor pool of the extraction: the encoders each of its actors holds, and what each actor reserves."""

    encoders: tuple[str, ...]
    batch_size: int
    pool_min: int
    pool_max: int
    num_cpus: float
    num_gpus: float
    memory_mb: float

    @property
    def name(self) -> str:
        return "+".join(self.encoders)

    def key(self, field: str) -> str:
        """Where a setting of this pool comes from, for messages."""
        if len(self.encoders) == 1 or field in FIRST_ENCODER_FIELDS:
            return f"extract.{self.encoders[0]}.{field}"
        return f"extract.{{{','.join(self.encoders)}}}.{field} summed (extract.encoder_pools: one)"


def encoder_pools(cfg: Any) -> list[EncoderPool]:
    """The actor pools this run starts, in pipeline order, once the GPU shares are numbers.

    ``extract.encoder_pools: separate``: a pool per encoder, each with its own settings. ``one``: a single
    pool whose actors hold every encoder of the run (see :data:`SUMMED_FIELDS`, :data:`FIRST_ENCODER_FIELDS`;
    the first is CLIP when the visual branches run).
    """
    e = cfg.extract
    names = encoder_stages(cfg)
    if e.encoder_pools == "separate":
        groups = [[name] for name in names]
    elif e.encoder_pools == "one":
        groups = [names] if names else []
    else:
        raise ValueError(f"extract.encoder_pools must be separate or one, got {e.encoder_pools!r}")
    return [_pool(e, group) for group in groups]


def _pool(e: Any, names: list[str]) -> EncoderPool:
    first = e[names[0]]
    # Rounded: Ray reserves in steps of 1e-4, and a float sum such as 0.1 + 0.1 + 0.1 must not ask for more.
    summed = {f: round(sum(float(e[name][f]) for name in names), 4) for f in SUMMED_FIELDS}
    return EncoderPool(tuple(names), **{f: int(first[f]) for f in FIRST_ENCODER_FIELDS}, **summed)


def gpu_share(need_gb: float, gpu_gb: float) -> float:
    """The share of one ``gpu_gb`` GPU that an actor needing ``need_gb`` reserves: rounded up to a
    hundredth (Ray's shares are decimal), and at most the whole GPU."""
    if need_gb <= 0 or gpu_gb <= 0:
        raise ValueError(
            f"GPU memory must be positive: an actor needs {need_gb:g} GiB of a {gpu_gb:g} GiB GPU"
        )
    return min(1.0, math.ceil(round(100 * need_gb / gpu_gb, 6)) / 100)


def local_gpu_memory_gb() -> float | None:
    """The memory (GiB) of this machine's smallest NVIDIA GPU, read through NVML; None without one.

    NVML, not torch: asking CUDA would create a CUDA context in the driver, which holds GPU memory for the
    whole run."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver (a CPU machine), or no GPU it can see
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        sizes = [pynvml.nvmlDeviceGetMemoryInfo(h).total for h in handles]
    finally:
        pynvml.nvmlShutdown()
    return min(sizes) / 2**30 if sizes else None


def with_gpu_shares(cfg: DictConfig, joined: bool) -> DictConfig:
    """``cfg`` with every encoder pool's ``num_gpus`` a number.

    A share set by hand stays. ``null`` becomes :func:`gpu_share` of the pool's ``gpu_memory_gb`` on a GPU
    of ``extract.node_gpu_memory_gb`` GiB; where that is null, this machine's GPU when the run starts its
    own Ray (``joined`` False; none when ``ray.num_gpus`` is 0), and a joined cluster, whose GPU nodes
    this machine cannot see, must name it. No GPU: share 0, the pool runs on the CPU.
    """
    derived = [name for name, _ in ENCODER_STAGES if cfg.extract[name].num_gpus is None]
    if not derived:
        return cfg
    gpu_gb = cfg.extract.node_gpu_memory_gb
    if gpu_gb is None and joined:
        keys = ", ".join(f"extract.{name}.num_gpus" for name in derived)
        raise ValueError(
            f"{keys} null asks for a share derived from the pool's gpu_memory_gb, but the GPU memory of the "
            "cluster's GPU nodes is unknown here: set extract.node_gpu_memory_gb (e.g. 24 for A10G or L4 "
            "nodes, 80 for A100-80GB or H100), or set the num_gpus"
        )
    if gpu_gb is None and cfg.ray.num_gpus != 0:
        gpu_gb = local_gpu_memory_gb()
    out = copy.deepcopy(cfg)
    for name in derived:
        out.extract[name].num_gpus = (
            gpu_share(float(cfg.extract[name].gpu_memory_gb), float(gpu_gb)) if gpu_gb else 0.0
        )
    shares = ", ".join(f"{name} {out.extract[name].num_gpus:g}" for name in derived)
    if gpu_gb:
        logger.info("extract: GPU shares from gpu_memory_gb on a %g GiB GPU: %s", float(gpu_gb), shares)
    else:  # a GPU profile on a machine without one: slow, so said loudly
        logger.warning("extract: no GPU found (NVML, ray.num_gpus): %s run on the CPU", ", ".join(derived))
    return out


def min_pool_actors(cfg: Any) -> list[tuple[str, float, float, float]]:
    """``(pool, num_gpus, num_cpus, memory_mb)`` for every actor the run starts with (``pool_min`` per pool)."""
    actors = []
    for pool in encoder_pools(cfg):
        share = pool.num_gpus
        if share > 1 and not share.is_integer():
            raise ValueError(
                f"{pool.key('num_gpus')}: {share:g} GPUs; above 1 a share must be a whole number of GPUs"
            )
        if pool.pool_min < 1 or pool.pool_max < pool.pool_min:
            raise ValueError(
                f"{pool.key('pool_min')} and pool_max: need 1 <= pool_min <= pool_max, got {pool.pool_min} "
                f"and {pool.pool_max}"
            )
        actors += [(pool.name, share, pool.num_cpus, pool.memory_mb)] * pool.pool_min
    return actors


def pack_gpu_shares(shares: list[float], node_gpus: list[float]) -> bool:
    """True if every share fits: fractions into one GPU each, whole numbers into whole GPUs of one node.

    First-fit decreasing; exact for the few actors of a run's minimum pools in every realistic case.
    """
    # free[n][g]: what is left of GPU g of node n (only whole GPUs exist in Ray).
    free = [[1.0] * int(math.floor(g)) for g in node_gpus]
    for share in sorted((s for s in shares if s > 0), reverse=True):
        if share >= 1:
            node = next((f for f in free if sum(1 for x in f if x >= 1.0) >= share), None)
            if node is None:
                return False
            for _ in range(int(share)):
                node[node.index(1.0)] = 0.0
            continue
        slot = next(((f, i) for f in free for i, x in enumerate(f) if x + 1e-9 >= share), None)
        if slot is None:
            return False
        f, i = slot
        f[i] -= share
    return True


def check_pools_fit(cfg: Any, capacity: Capacity) -> None:
    """Raise :class:`PoolsDoNotFit` if the minimum pools plus one decode task cannot be placed."""
    actors = min_pool_actors(cfg)
    shares = [gpu for _, gpu, _, _ in actors]
    wanted = ", ".join(f"{name} {gpu:g} GPU" for name, gpu, _, _ in actors if gpu > 0)
    if not pack_gpu_shares(shares, list(capacity.node_gpus)):
        raise PoolsDoNotFit(
            f"the encoder pools start with {wanted or 'no GPU'} (pool_min actors x num_gpus), which cannot be "
            f"placed on the GPUs per node {list(capacity.node_gpus)} ({capacity.source}); Ray would wait for "
            "them forever. Lower extract.<encoder>.num_gpus or pool_min, or add GPUs."
        )
    decode = cfg.extract.decode
    for what, need, have, keys in (
        ("CPUs", sum(a[2] for a in actors) + float(decode.num_cpus), capacity.cpus, "num_cpus"),
        (
            "MB of memory",
            sum(a[3] for a in actors) + float(decode.memory_mb),
            capacity.memory_mb,
            "memory_mb",
        ),
    ):
        if need > have + 1e-9:
            raise PoolsDoNotFit(
                f"the encoder pools' minimum actors and one decode task reserve {need:g} {what}, more than "
                f"the {have:g} the cluster has ({capacity.source}); Ray would wait forever. Lower "
                f"extract.<encoder>.{keys} / pool_min or extract.decode.{keys}."
            )


def cluster_capacity(joined: bool) -> Capacity | None:
    """The most the connected cluster can hold, or None where that cannot be known.

    A cluster this process started (``joined=False``): its live nodes, which is all it will ever have. A
    joined cluster may grow by means this process cannot see: None (callers only warn). Ray 2.60 has no
    public API for an autoscaler's node types and their ``max_workers``, and its own autoscalers (``ray up``'s,
    KubeRay's, v1 or v2) never publish them: nothing in its Python calls the GCS's ``ReportClusterConfig``,
    and the cluster config that Ray Data reads through ``ray._private.state`` stayed empty on a
    fake-provider autoscaling head.
    """
    if joined:
        return None
    return live_capacity()


def live_capacity() -> Capacity:
    """GPUs per live node and the live nodes' CPUs: what the cluster holds right now."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return Capacity(
        tuple(float(n["Resources"].get("GPU", 0)) for n in nodes),
        sum(float(n["Resources"].get("CPU", 0)) for n in nodes),
        sum(float(n["Resources"].get("memory", 0)) for n in nodes) / 2**20,
        f"the {len(nodes)} live node(s) of this cluster",
    )
