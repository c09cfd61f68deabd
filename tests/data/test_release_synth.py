"""`ecmf synth --release-layout`: candidates, extras, audio/NAME.wav and openface_face/NAME/NAME.npy."""

import wave
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ecmf_ray.cli import main
from ecmf_ray.data.synth import OPENFACE_SIZE, face_image

SECONDS, FPS = 3.0, 25  # the CLI's clip length and frame rate


def test_release_layout_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "release"
    assert main(["synth", str(out), "--release-layout", "--n", "2", "--candidates", "3", "--extra", "1"]) == 0
    capsys.readouterr()
    subtitles = pd.read_csv(out / "subtitle_chieng.csv")["name"].tolist()
    labelled = pd.read_csv(out / "track1_train_disdim.csv")["name"].tolist()
    candidates = pd.read_csv(out / "track_all_candidates.csv")["name"].tolist()
    assert len(subtitles) == 6 and len(labelled) == 2 and len(candidates) == 3
    assert not set(candidates) & set(labelled)
    (extra,) = set(subtitles) - set(labelled) - set(candidates)
    no_video, no_faces = candidates[0], candidates[1]

    videos = {p.stem for p in (out / "video").glob("*.mp4")}
    wavs = {p.stem for p in (out / "audio").glob("*.wav")}
    faces = {p.parent.name for p in (out / "openface_face").glob("*/*.npy")}
    assert videos == wavs == set(subtitles) - {no_video}
    assert faces == set(subtitles) - {no_video, no_faces} and extra in faces

    with wave.open(str(out / "audio" / f"{extra}.wav")) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)
        assert w.getnframes() == SECONDS * 16000
    crops = np.load(out / "openface_face" / extra / f"{extra}.npy", allow_pickle=False)
    assert crops.dtype == np.uint8 and crops.shape == (SECONDS * FPS, OPENFACE_SIZE, OPENFACE_SIZE, 3)
    # Cut where the face is, and BGR: the crop matches the face photo in BGR order, not in RGB.
    face_rgb = cv2.resize(face_image(), (OPENFACE_SIZE, OPENFACE_SIZE), interpolation=cv2.INTER_AREA)

    def correlation(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.astype(np.float32).ravel(), b.astype(np.float32).ravel())[0, 1])

    assert correlation(crops[10], face_rgb[..., ::-1]) > 0.8
    assert correlation(crops[10], face_rgb[..., ::-1]) > correlation(crops[10], face_rgb)


def test_default_layout_is_unchanged_and_flags_do_not_mix(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "plain"), "--n", "1", "--unlabeled", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [
        "subtitle_chieng.csv",
        "track1_train_disdim.csv",
        "truth.csv",
        "video",
    ]
    assert main(["synth", str(tmp_path / "x"), "--release-layout", "--unlabeled", "3"]) == 2
    assert "--candidates and --extra" in capsys.readouterr().err
