"""Extraction with the run folder and a clip on S3 (moto), through the sequential path (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import extract_config

from ecmf_ray import features, storage
from ecmf_ray.data import manifest
from ecmf_ray.extract.reference import run_sequential


def test_run_dir_and_video_on_s3(s3_env, clips: pd.DataFrame, model_cache: str) -> None:
    import s3fs

    s3fs.S3FileSystem().mkdir("extract-bucket")
    good = clips[clips["video_id"].str.startswith("sample_")].head(2).copy()
    remote = "s3://extract-bucket/video/clip.mp4"
    storage.write_bytes(remote, Path(good["video_path"].iloc[0]).read_bytes())
    good.loc[good.index[0], "video_path"] = remote
    run_dir = "s3://extract-bucket/run"
    manifest.write_manifest(good, manifest.manifest_path(run_dir))
    summary = run_sequential(extract_config(run_dir, model_cache))
    assert summary["videos_ok"] == 2
    for branch in features.BRANCHES:
        ids, matrix = features.load_branch(run_dir, branch)
        assert ids == good["video_id"].tolist() and matrix.shape[0] == 2
