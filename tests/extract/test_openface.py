"""OpenFace faces (extract.faces.source=openface), without Ray: reading, sampling, policies, the spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import extract_config

from ecmf_ray import storage
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import decode, faces, store
from ecmf_ray.extract.media import decode_batch


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    """Two labelled clips and two candidates (the first without a video, the second without faces)."""
    root = str(tmp_path_factory.mktemp("openface-release"))
    return synthesize(
        root, 2, unlabeled=2, candidates=2, release_layout=True, duration_s=1.0, width=160, height=120
    )


def video_of(summary, name: str) -> str:
    return os.path.join(summary.video_dir, f"{name}.mp4")


def with_faces(summary) -> list[str]:
    """Clips that have both a video and a face file."""
    return sorted(os.listdir(os.path.join(summary.out_dir, "openface_face")))


def batch_for(paths: list[str]) -> dict[str, np.ndarray]:
    ids = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return {
        "video_id": np.array(ids, dtype=object),
        "video_path": np.array(paths, dtype=object),
        "text": np.array(["好"] * len(paths), dtype=object),
    }


def test_openface_path_beside_the_video_folder_or_configured() -> None:
    assert faces.openface_path("/data/mer/video/s1.mp4", None) == "/data/mer/openface_face/s1/s1.npy"
    assert faces.openface_path("/data/mer/video/s1.avi", "/faces") == "/faces/s1/s1.npy"
    assert faces.openface_path("s3://b/mer/video/s1.mp4", None) == "s3://b/mer/openface_face/s1/s1.npy"


def test_openface_crops_sample_like_video_frames_and_turn_bgr_to_rgb() -> None:
    n, k = 30, 4
    stored = np.zeros((n, 112, 112, 3), np.uint8)
    stored[..., 0] = np.arange(n, dtype=np.uint8)[:, None, None]  # blue channel = frame index
    stored[..., 2] = 200  # red
    crops = faces.openface_crops(stored, k, 224)
    assert crops.shape == (k, 224, 224, 3)
    assert crops[:, 0, 0, 0].tolist() == [200] * k  # red first: RGB
    assert crops[:, 100, 100, 2].tolist() == decode.sample_indices(n, 0.0, k).tolist()
    assert faces.openface_crops(stored[:2], k, 64).shape == (2, 64, 64, 3)  # fewer frames than K: all


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (np.zeros((3, 112, 112, 3), np.float32), "float32"),
        (np.zeros((3, 112, 112), np.uint8), r"\(3, 112, 112\)"),
        (np.zeros((0, 112, 112, 3), np.uint8), "no frames"),
        (np.array([{"not": "frames"}], dtype=object), "cannot read"),
        (b"this is not a .npy file", "cannot read"),
    ],
)
def test_malformed_face_file_names_the_file(tmp_path: Path, content: object, problem: str) -> None:
    path = str(tmp_path / "s1.npy")
    if isinstance(content, bytes):
        storage.write_bytes(path, content)
    else:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(faces.BadFaceFile, match=problem) as info:
        faces.read_openface(path)
    assert path in str(info.value)


def test_decode_uses_the_face_file_and_no_detector(release, tmp_path, monkeypatch) -> None:
    def no_detector(_cfg):
        raise AssertionError("a detector ran with faces.source=openface")

    monkeypatch.setattr(faces, "build_detector", no_detector)
    name = with_faces(release)[0]
    cfg = extract_config(str(tmp_path), str(tmp_path), "extract.faces.source=openface")
    out = decode_batch(batch_for([video_of(release, name)]), cfg)
    assert out["error_face"][0] == "" and out["face_ratio"][0] == 1.0 and out["face_n"][0] == 4
    stored = np.load(faces.openface_path(video_of(release, name), None))
    expected = faces.openface_crops(stored, 4, 224)
    assert np.array_equal(out["faces"][0], expected)
    # Only the face branch, faces from a configured folder: the video is never opened, so a missing one
    # does not matter.
    cfg = extract_config(
        str(tmp_path),
        str(tmp_path),
        "extract.faces.source=openface",
        "extract.branches=[face]",
        f"extract.faces.openface_dir={os.path.join(release.out_dir, 'openface_face')}",
    )
    out = decode_batch(batch_for([str(tmp_path / "elsewhere" / f"{name}.mp4")]), cfg)
    assert out["error_face"][0] == "" and np.array_equal(out["faces"][0], expected)


@pytest.mark.parametrize("policy", ["error", "detect"])
def test_missing_face_file_follows_the_policy(release, tmp_path, policy: str) -> None:
    cfg = extract_config(
        str(tmp_path),
        str(tmp_path),
        "extract.faces.source=openface",
        f"extract.faces.openface_missing={policy}",
    )
    out = decode_batch(batch_for([video_of(release, release.no_faces)]), cfg)
    if policy == "error":
        cell = json.loads(out["error_face"][0])
        assert (cell["stage"], cell["error_type"]) == ("faces", "NoFaceFile")
        assert f"{release.no_faces}.npy" in cell["message"] and out["face_n"][0] == 0
    else:  # detected in the decoded frames instead
        assert out["error_face"][0] == "" and out["face_n"][0] == 4 and 0.0 <= out["face_ratio"][0] <= 1.0
    assert out["error_frame"][0] == "" and out["error_audio"][0] == ""


def test_malformed_face_file_is_a_row_error(release, tmp_path) -> None:
    root = tmp_path / "faces"
    name = with_faces(release)[0]
    (root / name).mkdir(parents=True)
    np.save(root / name / f"{name}.npy", np.zeros((2, 112, 112, 3), np.int16))
    cfg = extract_config(
        str(tmp_path), str(tmp_path), "extract.faces.source=openface", f"extract.faces.openface_dir={root}"
    )
    out = decode_batch(batch_for([video_of(release, name)]), cfg)
    cell = json.loads(out["error_face"][0])
    assert (cell["stage"], cell["error_type"]) == ("faces", "BadFaceFile") and "int16" in cell["message"]
    assert str(root / name / f"{name}.npy") in cell["message"]
    assert out["error_frame"][0] == ""  # the other branches go on


def test_the_spec_records_the_face_source(tmp_path) -> None:
    with pytest.raises(ValueError, match="extract.faces.source must be one of"):
        store.feature_spec(extract_config(str(tmp_path), str(tmp_path), "extract.faces.source=mtcnn"))
    with pytest.raises(ValueError, match="extract.faces.openface_missing must be one of"):
        store.feature_spec(
            extract_config(str(tmp_path), str(tmp_path), "extract.faces.openface_missing=skip")
        )
    openface = store.feature_spec(
        extract_config(str(tmp_path), str(tmp_path), "extract.faces.source=openface")
    )
    assert openface["face"]["faces"]["source"] == "openface"
    store.check_spec(str(tmp_path), openface)
    storage.write_bytes(storage.join(store.shards_dir(str(tmp_path)), "a.parquet"), b"")
    with pytest.raises(ValueError, match="differs in: face"):
        store.check_spec(str(tmp_path), store.feature_spec(extract_config(str(tmp_path), str(tmp_path))))
