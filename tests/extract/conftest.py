"""Small clips (160x120, 2 s) plus every broken kind, shared by the extraction tests."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from omegaconf import DictConfig

from ecmf_ray.config import load_config
from ecmf_ray.data import manifest
from ecmf_ray.data.synth import synthesize, write_broken_videos

GOOD = 8
MISSING = "broken_missing"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("extract-models"))


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A manifest frame: 8 good clips, the four broken files and one missing file."""
    root = str(tmp_path_factory.mktemp("extract-clips"))
    synthesize(root, GOOD, duration_s=2.0, width=160, height=120, hide_prob=0.0)
    video_dir = os.path.join(root, "video")
    names = pd.read_csv(os.path.join(root, "subtitle_chieng.csv"))
    rows = [
        (n, os.path.join(video_dir, f"{n}.mp4"), t)
        for n, t in zip(names["name"], names["chinese"], strict=True)
    ]
    rows += [(n, os.path.join(video_dir, f"{n}.mp4"), "好的。") for n in write_broken_videos(video_dir)]
    rows.append((MISSING, os.path.join(video_dir, "not_there.mp4"), "没有文件。"))
    frame = pd.DataFrame(rows, columns=["video_id", "video_path", "text"])
    frame = frame.assign(label=None, split="unlabeled", valence=None)
    return frame.sort_values("video_id").reset_index(drop=True)


def make_run(run_dir: str, clips: pd.DataFrame) -> str:
    manifest.write_manifest(clips, manifest.manifest_path(run_dir))
    return run_dir


def extract_config(run_dir: str, model_cache: str, *overrides: str) -> DictConfig:
    """The local profile with few frames: quick, and still every stage."""
    return load_config(
        ["local"],
        [f"run_dir={run_dir}", f"storage.model_cache={model_cache}", "extract.frames.num=4", *overrides],
    )
