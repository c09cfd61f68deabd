"""GPU shares of the encoder pools: every shipped profile's minimum pools fit one GPU, and a profile whose
minimum pools cannot be placed fails at start with a clear message instead of waiting forever."""

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


def test_profiles_are_found() -> None:
    assert {"local", "cluster", "workstation"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_starts_its_pools_on_one_gpu(profile: str) -> None:
    cfg = load_config([profile], REQUIRED)
    actors = resources.min_pool_actors(cfg)
    assert {a[0] for a in actors} == {"clip", "hubert", "roberta"}
    assert resources.pack_gpu_shares([a[1] for a in actors], [1.0])
    # One GPU and the CPUs and memory the pools reserve plus one decode task: enough to start.
    cpus = sum(a[2] for a in actors) + float(cfg.extract.decode.num_cpus)
    memory = sum(a[3] for a in actors) + float(cfg.extract.decode.memory_mb)
    resources.check_pools_fit(cfg, resources.Capacity((1.0,), cpus, memory, "one GPU"))
    with pytest.raises(resources.PoolsDoNotFit, match="CPUs"):
        resources.check_pools_fit(cfg, resources.Capacity((1.0,), cpus - 0.05, memory, "too few CPUs"))


def test_workstation_profile_shares_one_gpu() -> None:
    cfg = load_config(["workstation"])
    e = cfg.extract
    shares = [float(e[name].num_gpus) for name in ("clip", "hubert", "roberta")]
    assert all(0 < s < 1 for s in shares) and sum(shares) <= 1.0
    assert all(e[name].dtype == "bf16" for name in ("clip", "hubert", "roberta"))
    assert cfg.models.clip == "openai/clip-vit-large-patch14"
    # Fits the test cluster of the logical-GPU run (2 CPUs, 1 GPU) and a real 8-core workstation.
    resources.check_pools_fit(cfg, resources.Capacity((1.0,), 2.0, 8192, "2 CPUs, 8 GB"))
    with pytest.raises(resources.PoolsDoNotFit, match=r"6784 MB of memory.*4096"):
        resources.check_pools_fit(cfg, resources.Capacity((1.0,), 2.0, 4096, "4 GB"))
    assert cfg.train.max_concurrent_folds * cfg.train.cpus_per_worker <= 8
    assert cfg.tune.max_concurrent_trials * cfg.tune.cpus_per_trial <= 8


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


def test_bad_pool_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"extract.clip.num_gpus=1.5"):
        resources.min_pool_actors(load_config(["local"], ["extract.clip.num_gpus=1.5"]))
    with pytest.raises(ValueError, match=r"extract.hubert: need 1 <= pool_min <= pool_max"):
        resources.min_pool_actors(load_config(["local"], ["extract.hubert.pool_min=3"]))


def test_extract_fails_early_when_no_gpu_can_hold_the_pools(
    ray_cluster, tmp_path, clips: pd.DataFrame, model_cache: str
) -> None:
    """The shared test cluster has no GPU: a GPU share fails before any actor waits for one."""
    cfg = extract_config(make_run(str(tmp_path), clips), model_cache, "extract.clip.num_gpus=0.5")
    with pytest.raises(resources.PoolsDoNotFit, match=r"clip 0.5 GPU.*live node"):
        run_extract(cfg)
