"""The one-GPU workstation profile, end to end as a user runs it, through the default hub ids at their real
layouts, on a Ray cluster with one logical GPU.

An offline cache built by ``ecmf_ray.testing.hf_cache`` at ``reduced`` scale holds the three default ids: CLIP
ViT-L/14's 24 vision layers and patch 14, HuBERT-Large's 24 layers and conv front end, RoBERTa-wwm-ext-large's
24 layers and 21,128-token vocabulary, all 32 wide. ``ecmf prepare`` + ``ecmf extract --config workstation``
run in their own process with their own local Ray cluster (``ray.num_gpus=1``) on three clips; only the
widths are small and the frames fewer. HuBERT's layers 16-21 exist only in a 24-layer model; concat makes the
audio width show that six of them were taken.

Ray schedules a logical GPU exactly like a real one, so the three encoder pools must share it by the
fractional ``num_gpus`` the profile derives from their ``gpu_memory_gb`` (on a GPU named as a 24 GiB card,
since this machine has none for NVML to read); this machine has no CUDA, so each encoder actor must say once
that it runs on the CPU, naming the GPU Ray granted it.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from ecmf_ray import features
from ecmf_ray.config import load_config
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import resources
from ecmf_ray.testing import hf_cache
from tests.offline_cli import offline_ecmf

DEFAULT_IDS = dict(load_config().models)
WIDTH = hf_cache.architectures("reduced")["hubert"]["hidden_size"]
LAYERS = "16,17,18,19,20,21"
ENCODERS = ("clip", "hubert", "roberta")
# "(MapWorker(MapBatches(ClipEncoder)) pid=123) clip encoder: asked for num_gpus=0.5; Ray granted GPU ids [0] ..."
WARNING = re.compile(
    r"pid=(?P<pid>\d+)[^)]*\)[^\n]*? (?P<encoder>\w+) encoder: asked for num_gpus=(?P<asked>[\d.]+); "
    r"Ray granted GPU ids \[(?P<ids>[^\]]*)\] \(resources (?P<resources>\{[^}]*\})\), but CUDA is not available"
)
# Only sizes shrink: one logical GPU named as a 24 GiB card, 2 CPUs, 2 frames per clip.
OVERRIDES = (
    "ray.num_gpus=1",
    "extract.node_gpu_memory_gb=24",
    "ray.num_cpus=2",
    "extract.frames.num=2",
    "extract.hubert.combine=concat",
)


def test_real_architectures_match_the_published_sizes() -> None:
    """Parameter counts of the ``real`` scale (on the meta device: no memory) in millions, as published."""
    counts = {}
    for kind in hf_cache.architectures("real"):
        with torch.device("meta"):
            model = hf_cache.checkpoint_model(kind, "real")
        counts[kind] = round(sum(p.numel() for p in model.parameters()) / 1e6)
    assert counts == {"clip": 428, "hubert": 315, "roberta": 326}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, model_cache: str) -> Path:
    home = tmp_path_factory.mktemp("hf-home-reduced")
    return hf_cache.build_hf_home(home, DEFAULT_IDS, "reduced", model_cache)


def snapshot(hf_home: Path, kind: str) -> Path:
    repo = hf_home / "hub" / f"models--{DEFAULT_IDS[kind].replace('/', '--')}"
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


def test_cache_is_laid_out_as_the_real_repos(hf_home: Path) -> None:
    files = {kind: sorted(os.listdir(snapshot(hf_home, kind))) for kind in DEFAULT_IDS}
    assert files["clip"] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert files["hubert"] == ["config.json", "preprocessor_config.json", "pytorch_model.bin"]
    assert "pytorch_model.bin" in files["roberta"] and "model.safetensors" not in files["roberta"]
    config = {kind: json.loads((snapshot(hf_home, kind) / "config.json").read_text()) for kind in DEFAULT_IDS}
    assert config["clip"]["vision_config"]["num_hidden_layers"] == 24
    assert config["clip"]["vision_config"]["patch_size"] == 14
    assert config["hubert"]["num_hidden_layers"] == config["roberta"]["num_hidden_layers"] == 24
    assert config["roberta"]["vocab_size"] == hf_cache.BERT_VOCAB_SIZE
    assert len((snapshot(hf_home, "roberta") / "vocab.txt").read_text().splitlines()) == 21128
    weights = torch.load(snapshot(hf_home, "roberta") / "pytorch_model.bin", weights_only=True)
    assert weights and all(k.startswith(("bert.", "cls.")) for k in weights)


@pytest.fixture(scope="module")
def workstation_run(tmp_path_factory: pytest.TempPathFactory, hf_home: Path) -> tuple[str, pd.DataFrame, str]:
    """The run folder, its manifest, and ``ecmf extract``'s output (its actors' lines included)."""
    tmp = tmp_path_factory.mktemp("workstation")
    data, run = tmp / "data", tmp / "run"
    synthesize(str(data), 2, unlabeled=1, duration_s=2.0, width=160, height=120, hide_prob=0.0)
    ecmf = offline_ecmf(hf_home, tmp / "home")
    ecmf("prepare", "--config", "workstation", f"run_dir={run}", f"dataset.root={data}")
    log = ecmf("extract", "--config", "workstation", f"run_dir={run}", *OVERRIDES)
    return str(run), pd.read_parquet(run / "manifest.parquet"), log


def test_workstation_extracts_every_clip_at_the_real_layouts(workstation_run) -> None:
    run_dir, clips, _ = workstation_run
    assert len(clips) == 3
    assert (
        not os.path.exists(features.errors_path(run_dir))
        or pd.read_parquet(features.errors_path(run_dir)).empty
    )
    dims = {}
    for branch in features.BRANCHES:
        table = pq.read_table(features.branch_dir(run_dir, branch))
        assert sorted(table.column("video_id").to_pylist()) == sorted(clips["video_id"]), branch
        dims[branch] = table.schema.field("feature").type.list_size
    projection = hf_cache.architectures("reduced")["clip"]["vision"]["projection_dim"]
    assert dims == {"frame": projection, "face": projection, "audio": 6 * WIDTH, "text": WIDTH}
    assert set(pd.read_parquet(features.branch_dir(run_dir, "audio"))["layers"]) == {LAYERS}
    for branch, kind in (("frame", "clip"), ("face", "clip"), ("audio", "hubert"), ("text", "roberta")):
        assert set(pd.read_parquet(features.branch_dir(run_dir, branch))["model"]) == {DEFAULT_IDS[kind]}, (
            branch
        )


def test_each_encoder_actor_gets_its_gpu_share_and_warns_once(workstation_run) -> None:
    _, _, log = workstation_run
    cfg = resources.with_gpu_shares(load_config(["workstation"], list(OVERRIDES)), joined=False)
    found = [m.groupdict() for m in WARNING.finditer(log)]
    per_actor = {(f["encoder"], f["pid"]) for f in found}
    assert len(per_actor) == len(found)  # exactly one warning per actor
    assert sorted(f["encoder"] for f in found) == sorted(ENCODERS)  # one actor per pool (pool_max 1)
    for f in found:
        share = float(cfg.extract[f["encoder"]].num_gpus)
        assert 0 < share < 1 and float(f["asked"]) == share
        assert f["ids"].strip() in ("0", "'0'")  # the one logical GPU
        assert ast.literal_eval(f["resources"])["GPU"] == pytest.approx(share)
