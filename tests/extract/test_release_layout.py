"""The real release's path on Ray: a release-layout dataset, `prepare`, then `extract` with OpenFace faces."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from conftest import extract_config

from ecmf_ray import features, storage
from ecmf_ray.data.manifest import read_manifest
from ecmf_ray.data.prepare import run_prepare
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import store
from ecmf_ray.extract.pipeline import run_extract
from ecmf_ray.train.data import align_branch

N, CANDIDATES, EXTRA = 3, 3, 2


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    """3 labelled clips, 3 candidates (one without a video, one without its face file), 2 extras."""
    return synthesize(
        str(tmp_path_factory.mktemp("release")),
        N,
        unlabeled=CANDIDATES + EXTRA,
        candidates=CANDIDATES,
        release_layout=True,
        duration_s=2.0,
        width=160,
        height=120,
        hide_prob=0.0,
    )


def prepared(release, run_dir: str, model_cache: str, *overrides: str):
    cfg = extract_config(run_dir, model_cache, f"dataset.root={release.out_dir}", *overrides)
    return cfg, run_prepare(cfg)


def splits(run_dir: str) -> dict[str, int]:
    return read_manifest(storage.join(run_dir, "manifest.parquet"))["split"].value_counts().to_dict()


def test_prepare_counts_per_split(release, tmp_path, model_cache: str, capsys) -> None:
    _, summary = prepared(release, str(tmp_path / "none"), model_cache)
    assert splits(str(tmp_path / "none")) == {"train": N, "test": CANDIDATES}
    assert summary["candidates_missing_video"] == 1 and summary["extra_clips"] == EXTRA
    issues = pd.read_csv(tmp_path / "none" / "prepare_issues.csv")
    assert issues["name"].tolist() == [release.no_video] and "kept in test" in issues["problem"][0]
    assert f"{EXTRA} left out (dataset.unlabeled=none)" in capsys.readouterr().out

    prepared(release, str(tmp_path / "all"), model_cache, "dataset.unlabeled=all")
    assert splits(str(tmp_path / "all")) == {"train": N, "test": CANDIDATES, "unlabeled": EXTRA}
    prepared(release, str(tmp_path / "one"), model_cache, "dataset.unlabeled=1")
    assert splits(str(tmp_path / "one")) == {"train": N, "test": CANDIDATES, "unlabeled": 1}


def errors_by_row(run_dir: str) -> dict[tuple[str, str], tuple[str, str]]:
    errors = pd.read_parquet(features.errors_path(run_dir))
    return {(r.video_id, r.branch): (r.stage, r.error_type) for r in errors.itertuples()}


def test_extract_with_openface_faces(ray_cluster, release, tmp_path, model_cache: str) -> None:
    run_dir = str(tmp_path)
    cfg, _ = prepared(
        release,
        run_dir,
        model_cache,
        "dataset.unlabeled=all",
        "extract.faces.source=openface",
        "extract.faces.openface_missing=error",
    )
    summary = run_extract(cfg)
    everything = set(read_manifest(storage.join(run_dir, "manifest.parquet"))["video_id"])
    assert len(everything) == N + CANDIDATES + EXTRA

    face = pd.read_parquet(features.branch_dir(run_dir, "face"))
    assert set(face["video_id"]) == everything - {release.no_video, release.no_faces}
    assert (face["face_ratio"] == 1.0).all() and (face["n_frames"] == 4).all()
    errors = errors_by_row(run_dir)
    assert errors[(release.no_faces, "face")] == ("faces", "NoFaceFile")
    assert errors[(release.no_video, "face")] == ("faces", "NoFaceFile")  # no video, no face file either
    assert (
        errors[(release.no_video, "frame")]
        == errors[(release.no_video, "audio")]
        == ("open", "FileNotFoundError")
    )
    assert set(errors) == {
        (release.no_faces, "face"),
        (release.no_video, "face"),
        (release.no_video, "frame"),
        (release.no_video, "audio"),
    }
    assert summary["videos_errored"] == 2
    spec = json.loads(storage.read_text(store.spec_path(run_dir)))
    assert spec["face"]["faces"]["source"] == "openface"

    # The candidate without a video is still a test row (training predicts every one), with its text.
    manifest = read_manifest(storage.join(run_dir, "manifest.parquet")).set_index("video_id")
    assert manifest.loc[release.no_video, "split"] == "test"
    ids = pd.Index([release.no_video])
    present = [bool(align_branch(ids, *features.load_branch(run_dir, b))[1][0]) for b in features.BRANCHES]
    assert present == [False, False, False, True]


def test_missing_face_file_falls_back_to_detection(ray_cluster, release, tmp_path, model_cache: str) -> None:
    run_dir = str(tmp_path)
    cfg, _ = prepared(
        release,
        run_dir,
        model_cache,
        "extract.branches=[face]",
        "extract.faces.source=openface",
        "extract.faces.openface_missing=detect",
    )
    run_extract(cfg)
    face = pd.read_parquet(features.branch_dir(run_dir, "face")).set_index("video_id")
    with_file = {
        n for n in face.index if os.path.isfile(os.path.join(release.out_dir, "openface_face", n, f"{n}.npy"))
    }
    assert set(face.index) == with_file | {release.no_faces}
    assert (face.loc[sorted(with_file), "face_ratio"] == 1.0).all()
    assert (
        face.loc[release.no_faces, "n_frames"] == 4
    )  # detected (or centre crops, per no_face) in its frames
    assert errors_by_row(run_dir) == {(release.no_video, "face"): ("open", "FileNotFoundError")}
