"""The release's own faces and audio (extract.faces.source, extract.audio.source), without Ray: reading,
sampling, resampling, the fallback to the video, bad files, the spec."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import extract_config

from ecmf_ray import storage
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import decode, faces, sources, store
from ecmf_ray.extract.media import decode_batch
from ecmf_ray.extract.spec import changed_branches


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory):
    """Three labelled clips and two candidates: one clip without a face file, one without a WAV, one with
    a 44.1 kHz stereo WAV, and a candidate without a video."""
    root = str(tmp_path_factory.mktemp("openface-release"))
    summary = synthesize(
        root, 3, unlabeled=2, candidates=2, release_layout=True, duration_s=1.0, width=160, height=120
    )
    assert len(summary.no_faces) == len(summary.no_wav) == len(summary.resampled_wav) == 1
    return summary


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
    assert out["face_source"][0] == "openface"
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


@pytest.mark.parametrize("source", ["openface", "auto"])
def test_missing_face_file_is_an_error_or_detected(release, tmp_path, source: str) -> None:
    cfg = extract_config(str(tmp_path), str(tmp_path), f"extract.faces.source={source}")
    (no_faces,) = release.no_faces
    out = decode_batch(batch_for([video_of(release, no_faces)]), cfg)
    if source == "openface":
        cell = json.loads(out["error_face"][0])
        assert (cell["stage"], cell["error_type"]) == ("faces", "NoFaceFile")
        assert f"{no_faces}.npy" in cell["message"] and out["face_n"][0] == 0
        assert out["face_source"][0] == ""
    else:  # detected in the decoded frames instead
        assert out["error_face"][0] == "" and out["face_n"][0] == 4 and 0.0 <= out["face_ratio"][0] <= 1.0
        assert out["face_source"][0] == "detect"
    assert out["error_frame"][0] == "" and out["error_audio"][0] == ""


def test_auto_takes_the_face_file_where_there_is_one(release, tmp_path) -> None:
    """The default: per clip, OpenFace crops where the release has them, detection for the rest."""
    cfg = extract_config(str(tmp_path), str(tmp_path))
    assert cfg.extract.faces.source == "auto" and cfg.extract.audio.source == "auto"
    names = sorted(os.listdir(release.video_dir))
    out = decode_batch(batch_for([os.path.join(release.video_dir, n) for n in names]), cfg)
    ids = [os.path.splitext(n)[0] for n in names]
    expected = ["detect" if i in release.no_faces else "openface" for i in ids]
    assert out["face_source"].tolist() == expected and set(out["error_face"]) == {""}
    openface = np.array(expected) == "openface"
    assert (out["face_ratio"][openface] == 1.0).all()


@pytest.mark.parametrize("source", ["openface", "auto"])
def test_malformed_face_file_is_a_row_error(release, tmp_path, source: str) -> None:
    root = tmp_path / "faces"
    name = with_faces(release)[0]
    (root / name).mkdir(parents=True)
    np.save(root / name / f"{name}.npy", np.zeros((2, 112, 112, 3), np.int16))
    cfg = extract_config(
        str(tmp_path), str(tmp_path), f"extract.faces.source={source}", f"extract.faces.openface_dir={root}"
    )
    out = decode_batch(batch_for([video_of(release, name)]), cfg)
    cell = json.loads(out["error_face"][0])
    assert (cell["stage"], cell["error_type"]) == ("faces", "BadFaceFile") and "int16" in cell["message"]
    assert str(root / name / f"{name}.npy") in cell["message"]
    assert out["error_frame"][0] == ""  # the other branches go on


def test_the_spec_records_the_face_and_audio_sources(tmp_path) -> None:
    for key, bad in (("faces", "mtcnn"), ("audio", "mic")):
        with pytest.raises(ValueError, match=f"extract.{key}.source must be one of"):
            store.feature_spec(extract_config(str(tmp_path), str(tmp_path), f"extract.{key}.source={bad}"))
    auto = store.feature_spec(extract_config(str(tmp_path), str(tmp_path)))
    assert auto["face"]["faces"]["source"] == "auto" and auto["audio"]["source"] == "auto"
    for source in ("openface", "detect"):
        other = store.feature_spec(
            extract_config(str(tmp_path), str(tmp_path), f"extract.faces.source={source}")
        )
        assert changed_branches(auto, other) == {"face": ["faces.source"]}  # face alone is extracted again
    video = store.feature_spec(extract_config(str(tmp_path), str(tmp_path), "extract.audio.source=video"))
    assert changed_branches(auto, video) == {"audio": ["source"]}


# ------------------------------------------------------------------------------------- the release's WAVs


def wav_of(summary, name: str) -> str:
    return os.path.join(summary.out_dir, "audio", f"{name}.wav")


def test_wav_path_beside_the_video_folder_or_configured() -> None:
    assert sources.wav_path("/data/mer/video/s1.mp4", None) == "/data/mer/audio/s1.wav"
    assert sources.wav_path("/data/mer/video/s1.avi", "/wavs") == "/wavs/s1.wav"
    assert sources.wav_path("s3://b/mer/video/s1.mp4", None) == "s3://b/mer/audio/s1.wav"


def test_auto_audio_reads_the_wav_where_there_is_one(release, tmp_path, monkeypatch) -> None:
    cfg = extract_config(str(tmp_path), str(tmp_path), "extract.branches=[audio]")
    names = [os.path.splitext(n)[0] for n in sorted(os.listdir(release.video_dir))]
    out = decode_batch(batch_for([video_of(release, n) for n in names]), cfg)
    assert set(out["error_audio"]) == {""}
    assert out["audio_source"].tolist() == ["video" if n in release.no_wav else "wav" for n in names]
    for name, samples in zip(names, out["audio"], strict=True):
        got = np.frombuffer(samples, np.float32)
        path = video_of(release, name) if name in release.no_wav else wav_of(release, name)
        assert np.array_equal(got, decode.read_audio(path, 16000)), name
    # The 44.1 kHz stereo WAV arrives as 16 kHz mono, as long as the 16 kHz ones.
    (resampled,) = release.resampled_wav
    lengths = {n: len(s) // 4 for n, s in zip(names, out["audio"], strict=True) if n not in release.no_wav}
    assert abs(lengths[resampled] - 16000) <= 32 and lengths[names[0]] == 16000

    # Only the audio branch, served by a WAV: the video is never opened.
    name = names[0]
    cfg = extract_config(
        str(tmp_path),
        str(tmp_path),
        "extract.branches=[audio]",
        f"extract.audio.wav_dir={os.path.join(release.out_dir, 'audio')}",
    )
    out = decode_batch(batch_for([str(tmp_path / "elsewhere" / f"{name}.mp4")]), cfg)
    assert out["error_audio"][0] == "" and out["audio_source"][0] == "wav"


def test_audio_source_wav_and_video(release, tmp_path) -> None:
    (no_wav,) = release.no_wav
    name = [n for n in with_faces(release) if n not in release.no_wav][0]
    cfg = extract_config(str(tmp_path), str(tmp_path), "extract.branches=[audio]", "extract.audio.source=wav")
    out = decode_batch(batch_for([video_of(release, no_wav), video_of(release, name)]), cfg)
    cell = json.loads(out["error_audio"][0])
    assert (cell["stage"], cell["error_type"]) == ("decode_audio", "NoWavFile")
    assert wav_of(release, no_wav) in cell["message"]
    assert out["audio_source"].tolist() == ["", "wav"] and out["error_audio"][1] == ""
    cfg = extract_config(
        str(tmp_path), str(tmp_path), "extract.branches=[audio]", "extract.audio.source=video"
    )
    out = decode_batch(batch_for([video_of(release, name)]), cfg)
    assert out["audio_source"].tolist() == ["video"]
    got = np.frombuffer(out["audio"][0], np.float32)
    assert np.array_equal(got, decode.read_audio(video_of(release, name), 16000))


@pytest.mark.parametrize("source", ["wav", "auto"])
def test_malformed_wav_is_a_row_error_naming_the_file(release, tmp_path, source: str) -> None:
    name = with_faces(release)[0]
    root = tmp_path / "wavs"
    root.mkdir()
    (root / f"{name}.wav").write_bytes(b"RIFF\x00\x00not a wave file at all")
    cfg = extract_config(
        str(tmp_path), str(tmp_path), f"extract.audio.source={source}", f"extract.audio.wav_dir={root}"
    )
    out = decode_batch(batch_for([video_of(release, name)]), cfg)
    cell = json.loads(out["error_audio"][0])
    assert (cell["stage"], cell["error_type"]) == ("decode_audio", "BadWavFile")
    assert str(root / f"{name}.wav") in cell["message"]
    assert out["error_frame"][0] == out["error_face"][0] == ""  # the other branches go on
