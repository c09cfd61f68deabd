"""The default hub ids at their real layouts (layer counts, vocabulary, files), reduced in width, in CI.

An offline cache built by ``ecmf_ray.testing.hf_cache`` at ``reduced`` scale: CLIP ViT-L/14's 24 vision layers
and patch 14, HuBERT-Large's 24 layers and conv front end, RoBERTa-wwm-ext-large's 24 layers and 21,128-token
vocabulary, all 32 wide. ``ecmf prepare`` + ``ecmf extract --config configs/workstation.yaml`` (GPU shares 0,
its bf16) run on two clips as a user runs them. HuBERT's layers 16-21 exist only in a 24-layer model; concat
makes the audio width show that six of them were taken.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from ecmf_ray import features
from ecmf_ray.config import load_config
from ecmf_ray.data.synth import synthesize
from ecmf_ray.testing import hf_cache
from tests.offline_cli import offline_ecmf

DEFAULT_IDS = dict(load_config().models)
WIDTH = hf_cache.architectures("reduced")["hubert"]["hidden_size"]
LAYERS = "16,17,18,19,20,21"


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


def test_extract_through_the_default_ids(tmp_path: Path, hf_home: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    synthesize(str(data), 1, unlabeled=1, duration_s=2.0, width=160, height=120, hide_prob=0.0)
    ecmf = offline_ecmf(hf_home, tmp_path / "home")
    ecmf("prepare", "--config", "workstation", f"run_dir={run}", f"dataset.root={data}")
    ecmf(
        "extract",
        "--config",
        "workstation",
        f"run_dir={run}",
        "ray.num_cpus=2",
        "ray.num_gpus=0",
        *(f"extract.{pool}.num_gpus=0" for pool in ("clip", "hubert", "roberta")),
        "extract.frames.num=2",
        "extract.hubert.combine=concat",
    )
    assert pd.read_parquet(features.errors_path(str(run))).empty
    dims = {}
    for branch in ("frame", "face", "audio", "text"):
        table = pq.read_table(features.branch_dir(str(run), branch))
        assert table.num_rows == 2, branch
        dims[branch] = table.schema.field("feature").type.list_size
    projection = hf_cache.architectures("reduced")["clip"]["vision"]["projection_dim"]
    assert dims == {"frame": projection, "face": projection, "audio": 6 * WIDTH, "text": WIDTH}
    audio = pd.read_parquet(features.branch_dir(str(run), "audio"))
    assert set(audio["layers"]) == {LAYERS}
    assert set(pd.read_parquet(features.branch_dir(str(run), "text"))["model"]) == {DEFAULT_IDS["roberta"]}
