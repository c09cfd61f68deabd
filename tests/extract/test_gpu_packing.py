"""GPU shares of the encoder pools: every shipped profile's minimum pools fit one GPU, a share left to be
derived follows the GPU memory the pool needs and the GPU it gets, and a profile whose minimum pools cannot
be placed fails at start with a clear message instead of waiting forever."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import extract_config, make_run

from ecmf_ray.config import configs_dir, load_config
from ecmf_ray.extract import resources
from ecmf_ray.extract.pipeline import run_extract

PROFILES = sorted(p.stem for p in configs_dir().glob("*.yaml") if p.stem != "base")
# What the cluster profile leaves to the user (???); the other profiles take them too.
REQUIRED = ["run_dir=s3://bucket/run", "dataset.root=s3://bucket/mer2025"]
ENCODERS = ("clip", "hubert", "roberta")


def shares(cfg, joined: bool) -> list[float]:
    """The encoder pools' GPU shares once :func:`resources.with_gpu_shares` has resolved ``cfg``."""
    e = resources.with_gpu_shares(cfg, joined).extract
    return [float(e[name].num_gpus) for name in ENCODERS]


def shares_on(profile: str, gpu_gb: float, *overrides: str) -> list[float]:
    """The encoder pools' GPU shares of ``profile`` on a cluster whose GPUs have ``gpu_gb`` GiB."""
    cfg = load_config([profile], [*REQUIRED, f"extract.node_gpu_memory_gb={gpu_gb}", *overrides])
    return shares(cfg, joined=True)


def test_profiles_are_found() -> None:
    assert {"local", "cluster", "workstation"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_starts_its_pools_on_one_gpu(profile: str) -> None:
    """On one 24 GiB GPU, the smallest card the profiles are written for."""
    cfg = load_config([profile], [*REQUIRED, "extract.node_gpu_memory_gb=24"])
    cfg = resources.with_gpu_shares(cfg, joined=True)
    actors = resources.min_pool_actors(cfg)
    assert {name for pool in resources.encoder_pools(cfg) for name in pool.encoders} == set(ENCODERS)
    assert resources.pack_gpu_shares([a[1] for a in actors], [1.0])
    # One GPU and the CPUs and memory the pools reserve plus one decode task: enough to start.
    cpus = sum(a[2] for a in actors) + float(cfg.extract.decode.num_cpus)
    memory = sum(a[3] for a in actors) + float(cfg.extract.decode.memory_mb)
    resources.check_pools_fit(cfg, resources.Capacity((1.0,), cpus, memory, "one GPU"))
    with pytest.raises(resources.PoolsDoNotFit, match="CPUs"):
        resources.check_pools_fit(cfg, resources.Capacity((1.0,), cpus - 0.05, memory, "too few CPUs"))


def test_workstation_profile_shares_one_gpu() -> None:
    cfg = resources.with_gpu_shares(load_config(["workstation"], ["extract.node_gpu_memory_gb=24"]), False)
    e = cfg.extract
    shares = [float(e[name].num_gpus) for name in ENCODERS]
    assert all(0 < s < 1 for s in shares) and sum(shares) <= 1.0
    assert all(e[name].dtype == "bf16" for name in ("clip", "hubert", "roberta"))
    assert cfg.models.clip == "openai/clip-vit-large-patch14"
    # Fits the test cluster of the logical-GPU run (2 CPUs, 1 GPU) and a real 8-core workstation.
    resources.check_pools_fit(cfg, resources.Capacity((1.0,), 2.0, 8192, "2 CPUs, 8 GB"))
    with pytest.raises(resources.PoolsDoNotFit, match=r"6784 MB of memory.*4096"):
        resources.check_pools_fit(cfg, resources.Capacity((1.0,), 2.0, 4096, "4 GB"))
    assert cfg.train.max_concurrent_folds * cfg.train.cpus_per_worker <= 8
    assert cfg.tune.max_concurrent_trials * cfg.tune.cpus_per_trial <= 8


def test_workstation_shares_follow_the_gpus_memory() -> None:
    """One profile for a 24 GB card and an 80 GB one: the shares are what each pool's gpu_memory_gb takes of
    the GPU, rounded up to a hundredth, and a share set by hand still wins."""
    assert shares_on("workstation", 24) == [0.13, 0.09, 0.09]  # 3, 2 and 2 GiB of 24
    assert shares_on("workstation", 80) == [0.04, 0.03, 0.03]
    assert shares_on("workstation", 80, "extract.clip.num_gpus=0.5") == [0.5, 0.03, 0.03]
    assert shares_on("workstation", 2) == [1.0, 1.0, 1.0]  # a card smaller than the need: a whole GPU each
    assert shares_on("cluster", 80) == shares_on("cluster", 24)  # the cluster profile sets its shares


@pytest.mark.parametrize(
    ("need", "gpu", "share"),
    [(3.0, 24.0, 0.13), (12.0, 24.0, 0.5), (2.0, 80.0, 0.03), (0.5, 141.0, 0.01), (30.0, 24.0, 1.0)],
)
def test_gpu_share(need: float, gpu: float, share: float) -> None:
    assert resources.gpu_share(need, gpu) == share


def test_a_derived_share_on_a_joined_cluster_needs_its_gpu_memory() -> None:
    cfg = load_config(["workstation"])
    with pytest.raises(ValueError, match=r"extract.clip.num_gpus, .*set extract.node_gpu_memory_gb"):
        resources.with_gpu_shares(cfg, joined=True)


def test_a_local_run_reads_this_machines_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(["workstation"])
    monkeypatch.setattr(resources, "local_gpu_memory_gb", lambda: 24.0)
    assert shares(cfg, joined=False) == [0.13, 0.09, 0.09]
    # ray.num_gpus=0 keeps a GPU machine's pools on the CPU; so does a machine without a GPU.
    no_gpus = load_config(["workstation"], ["ray.num_gpus=0"])
    assert shares(no_gpus, joined=False) == [0.0] * 3
    monkeypatch.setattr(resources, "local_gpu_memory_gb", lambda: None)
    assert shares(cfg, joined=False) == [0.0] * 3


def test_nvml_answers_with_or_without_a_gpu() -> None:
    """The real NVML call: None without an NVIDIA driver (as on CI), else the smallest GPU's memory."""
    found = resources.local_gpu_memory_gb()
    assert found is None or found > 0


def test_cluster_profile_grows_gpu_pools() -> None:
    e = load_config(["cluster"], REQUIRED).extract
    assert e.clip.pool_max > e.clip.pool_min
    assert float(e.roberta.num_gpus) < 1  # no longer a whole GPU held for the smallest model


@pytest.mark.parametrize(
    ("shares", "node_gpus", "fits"),
    [
        ([0.5, 0.3, 0.2], [1.0], True),
        ([0.6, 0.6], [2.0], True),
        ([0.6, 0.6, 0.6], [2.0], False),  # 1.8 <= 2 GPUs, but no GPU holds two 0.6 shares
        ([1.0, 1.0, 1.0], [1.0, 2.0], True),
        ([1.0, 1.0, 1.0], [2.0], False),  # the old cluster profile on a two-GPU node
        ([2.0], [1.0, 1.0], False),  # whole GPUs of one node
        ([2.0, 0.5], [2.0, 1.0], True),
        ([0.5], [], False),
        ([0.0, 0.0], [], True),
    ],
)
def test_pack_gpu_shares(shares: list[float], node_gpus: list[float], fits: bool) -> None:
    assert resources.pack_gpu_shares(shares, node_gpus) is fits


def test_whole_gpu_pools_on_two_gpus_are_refused() -> None:
    cfg = load_config(
        ["cluster"],
        [*REQUIRED, "extract.clip.num_gpus=1", "extract.hubert.num_gpus=1", "extract.roberta.num_gpus=1"],
    )
    with pytest.raises(resources.PoolsDoNotFit, match=r"clip 1 GPU, hubert 1 GPU, roberta 1 GPU.*\[2\.0\]"):
        resources.check_pools_fit(cfg, resources.Capacity((2.0,), 16.0, 65536, "a two-GPU node"))


def test_gpu_profiles_run_a_pool_per_encoder_and_the_local_profile_one() -> None:
    for profile in ("workstation", "cluster"):
        cfg = load_config([profile], [*REQUIRED, "extract.node_gpu_memory_gb=24"])
        pools = resources.encoder_pools(resources.with_gpu_shares(cfg, joined=True))
        assert [p.encoders for p in pools] == [("clip",), ("hubert",), ("roberta",)], profile
    assert [p.encoders for p in resources.encoder_pools(load_config(["local"]))] == [ENCODERS]


def test_one_pool_reserves_what_the_separate_pools_actors_would() -> None:
    """Each actor of the one pool holds the three encoders: it reserves one actor of each separate pool's
    CPUs, GPU share and memory, and the pool takes CLIP's batch and size."""
    held = ["extract.clip.num_gpus=0.5", "extract.hubert.num_gpus=0.25", "extract.roberta.num_gpus=0.25",
            "extract.clip.memory_mb=100", "extract.roberta.memory_mb=28", "extract.clip.pool_max=2",
            "extract.hubert.batch_size=4", "extract.hubert.pool_max=3"]  # fmt: skip
    cfg = load_config(["local"], held)
    (pool,) = resources.encoder_pools(cfg)
    assert pool.encoders == ENCODERS
    # 0.1 each, summed without float residue: Ray reserves in steps of 1e-4.
    assert (pool.num_cpus, pool.num_gpus, pool.memory_mb) == (0.3, 1.0, 128.0)
    assert (pool.batch_size, pool.pool_min, pool.pool_max) == (cfg.extract.clip.batch_size, 1, 2)
    separate = resources.encoder_pools(load_config(["local"], [*held, "extract.encoder_pools=separate"]))
    assert [(p.encoders, p.num_gpus, p.batch_size, p.pool_max) for p in separate] == [
        (("clip",), 0.5, cfg.extract.clip.batch_size, 2),
        (("hubert",), 0.25, 4, 3),
        (("roberta",), 0.25, cfg.extract.roberta.batch_size, 1),
    ]
    assert sum(p.num_cpus for p in separate) == pytest.approx(pool.num_cpus)
    # A pass of one branch (e.g. after a changed extract.hubert.layers): its encoder's pool alone.
    (audio,) = resources.encoder_pools(load_config(["local"], [*held, "extract.branches=[audio]"]))
    assert (audio.encoders, audio.batch_size, audio.pool_max, audio.num_gpus) == (("hubert",), 4, 3, 0.25)


def test_bad_pool_settings_are_refused() -> None:
    separate = "extract.encoder_pools=separate"
    with pytest.raises(ValueError, match=r"extract.clip.num_gpus: 1.5 GPUs; above 1"):
        resources.min_pool_actors(load_config(["local"], [separate, "extract.clip.num_gpus=1.5"]))
    with pytest.raises(
        ValueError, match=r"extract.hubert.pool_min and pool_max: need 1 <= pool_min <= pool_max"
    ):
        resources.min_pool_actors(load_config(["local"], [separate, "extract.hubert.pool_min=3"]))
    # One pool: three shares that each fit a GPU, but not one actor holding all three models.
    halves = [f"extract.{name}.num_gpus=0.5" for name in ENCODERS]
    with pytest.raises(
        ValueError,
        match=r"extract.\{clip,hubert,roberta\}.num_gpus summed \(extract.encoder_pools: one\): 1.5 GPUs",
    ):
        resources.min_pool_actors(load_config(["local"], halves))
    with pytest.raises(ValueError, match=r"extract.clip.pool_min and pool_max: need 1 <="):
        resources.min_pool_actors(load_config(["local"], ["extract.clip.pool_min=3"]))
    with pytest.raises(ValueError, match="extract.encoder_pools must be separate or one, got 'shared'"):
        resources.encoder_pools(load_config(["local"], ["extract.encoder_pools=shared"]))


def test_extract_fails_early_when_no_gpu_can_hold_the_pools(
    ray_cluster, tmp_path, clips: pd.DataFrame, model_cache: str
) -> None:
    """The shared test cluster has no GPU: a GPU share fails before any actor waits for one."""
    cfg = extract_config(make_run(str(tmp_path), clips), model_cache, "extract.clip.num_gpus=0.5")
    with pytest.raises(resources.PoolsDoNotFit, match=r"clip\+hubert\+roberta 0.5 GPU.*live node"):
        run_extract(cfg)
