"""The real release's path on Ray: a release-layout dataset, `prepare`, then `extract` with the release's
own faces and audio (extract.faces.source, extract.audio.source)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import extract_config

from ecmf_ray import features, storage
from ecmf_ray.data.manifest import read_manifest
from ecmf_ray.data.prepare import run_prepare
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import spec, store
from ecmf_ray.extract.pipeline import run_extract
from ecmf_ray.pipeline import reason_to_run
from ecmf_ray.train.data import align_branch

N, CANDIDATES, EXTRA = 3, 3, 2


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    """3 labelled clips, 3 candidates (one without a video), 2 extras; two clips without their face file, two
    without their WAV, one with a 44.1 kHz stereo WAV."""
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


def branch_bytes(run_dir: str, branch: str) -> dict[str, bytes]:
    folder = Path(features.branch_dir(run_dir, branch))
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def wav_exists(release, name: str) -> bool:
    return os.path.isfile(os.path.join(release.out_dir, "audio", f"{name}.wav"))


def test_extract_with_openface_faces(ray_cluster, release, tmp_path, model_cache: str) -> None:
    run_dir = str(tmp_path)
    cfg, _ = prepared(release, run_dir, model_cache, "dataset.unlabeled=all", "extract.faces.source=openface")
    summary = run_extract(cfg)
    everything = set(read_manifest(storage.join(run_dir, "manifest.parquet"))["video_id"])
    assert len(everything) == N + CANDIDATES + EXTRA
    no_faces = set(release.no_faces)
    assert len(no_faces) == 2 and no_faces < everything

    face = pd.read_parquet(features.branch_dir(run_dir, "face"))
    assert set(face["video_id"]) == everything - {release.no_video} - no_faces
    assert (face["face_ratio"] == 1.0).all() and (face["n_frames"] == 4).all()
    assert set(face["source"]) == {"openface"}
    errors = errors_by_row(run_dir)
    for name in no_faces:
        assert errors[(name, "face")] == ("faces", "NoFaceFile")
    assert errors[(release.no_video, "face")] == ("faces", "NoFaceFile")  # no video, no face file either
    # No video, no WAV: audio falls back to the (missing) video.
    assert (
        errors[(release.no_video, "frame")]
        == errors[(release.no_video, "audio")]
        == ("open", "FileNotFoundError")
    )
    assert set(errors) == {(n, "face") for n in no_faces} | {
        (release.no_video, "face"),
        (release.no_video, "frame"),
        (release.no_video, "audio"),
    }
    assert summary["videos_errored"] == 3
    recorded = json.loads(storage.read_text(store.spec_path(run_dir)))
    assert recorded["face"]["faces"]["source"] == "openface"
    # Audio (source auto): the release's WAV where there is one, the video's track for the rest.
    audio = pd.read_parquet(features.branch_dir(run_dir, "audio")).set_index("video_id")
    assert {n: audio.loc[n, "source"] for n in audio.index} == {
        n: "wav" if wav_exists(release, n) else "video" for n in audio.index
    }
    assert set(release.no_wav) <= set(audio.index) and set(release.resampled_wav) <= set(audio.index)
    assert pd.read_parquet(features.branch_dir(run_dir, "frame"))["source"].isna().all()

    # The candidate without a video is still a test row (training predicts every one), with its text.
    manifest = read_manifest(storage.join(run_dir, "manifest.parquet")).set_index("video_id")
    assert manifest.loc[release.no_video, "split"] == "test"
    ids = pd.Index([release.no_video])
    present = [bool(align_branch(ids, *features.load_branch(run_dir, b))[1][0]) for b in features.BRANCHES]
    assert present == [False, False, False, True]


def test_auto_sources_their_summary_and_a_switch(
    ray_cluster, release, tmp_path, model_cache: str, capsys
) -> None:
    """The defaults (faces and audio: auto) take the release's file per clip where there is one; extract
    prints the shares; switching the face source re-extracts the face branch alone, and makes what was
    trained on the old features stale."""
    run_dir = str(tmp_path)
    cfg, _ = prepared(release, run_dir, model_cache, "dataset.unlabeled=all", "extract.branches=[face,audio]")
    summary = run_extract(cfg)
    face = pd.read_parquet(features.branch_dir(run_dir, "face")).set_index("video_id")
    with_video = set(face.index)
    assert with_video == set(read_manifest(storage.join(run_dir, "manifest.parquet"))["video_id"]) - {
        release.no_video
    }
    assert {n: face.loc[n, "source"] for n in face.index} == {
        n: "detect" if n in release.no_faces else "openface" for n in face.index
    }
    detected = face.loc[list(release.no_faces)]
    assert (detected["n_frames"] == 4).all()  # detected (or centre crops, per no_face) in its frames
    assert (face.loc[face["source"] == "openface", "face_ratio"] == 1.0).all()
    audio = pd.read_parquet(features.branch_dir(run_dir, "audio")).set_index("video_id")
    assert {n: audio.loc[n, "source"] for n in audio.index} == {
        n: "video" if n in release.no_wav else "wav" for n in audio.index
    }
    assert errors_by_row(run_dir) == {
        (release.no_video, "face"): ("open", "FileNotFoundError"),
        (release.no_video, "audio"): ("open", "FileNotFoundError"),
    }

    n_detect, n_wavless = len(release.no_faces), len(release.no_wav)
    no_face = float((1.0 - face["face_ratio"]).mean())
    assert summary["sources"] == {
        "face": {"detect": n_detect, "openface": len(face) - n_detect},
        "no_face_frames": pytest.approx(no_face),
        "audio": {"video": n_wavless, "wav": len(audio) - n_wavless},
    }
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("extract: faces from")]
    openface_share = (len(face) - n_detect) / len(face)
    assert line == [
        f"extract: faces from detect {n_detect / len(face):.0%} ({n_detect}), openface {openface_share:.0%} "
        f"({len(face) - n_detect}); frames with no face {no_face:.1%}; audio from video "
        f"{n_wavless / len(audio):.0%} ({n_wavless}), wav {(len(audio) - n_wavless) / len(audio):.0%} "
        f"({len(audio) - n_wavless})"
    ]

    # Switching the face source is a change of the face features, as a layer change is.
    audio_bytes = branch_bytes(run_dir, "audio")
    old_data = spec.data_digest(run_dir)
    switched = cfg.copy()
    switched.extract.faces.source = "detect"
    reason = reason_to_run(switched, "extract")
    assert "changed: face.faces.source" in reason and "face extracted again, audio kept" in reason
    summary = run_extract(switched)
    assert summary["processed"] == len(with_video) + 1  # every video once, for the face branch only
    face = pd.read_parquet(features.branch_dir(run_dir, "face"))
    assert set(face["source"]) == {"detect"} and set(face["video_id"]) == with_video
    assert branch_bytes(run_dir, "audio") == audio_bytes
    assert spec.data_digest(run_dir) != old_data  # training on the old faces is stale
    assert reason_to_run(switched, "extract") is None
