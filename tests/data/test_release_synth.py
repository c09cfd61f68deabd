"""`ecmf synth --release-layout`: candidates, extras, audio/NAME.wav and openface_face/NAME/NAME.npy,
with the release's gaps (no video, no face file, no WAV) and WAVs at another rate."""

import wave
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ecmf_ray.cli import main
from ecmf_ray.data.synth import OPENFACE_SIZE, face_image, synthesize
from ecmf_ray.extract.decode import read_audio

SECONDS, FPS = 3.0, 25  # the CLI's clip length and frame rate


def spectrum_correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(np.abs(np.fft.rfft(a[:n])), np.abs(np.fft.rfft(b[:n])))[0, 1])


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
    no_video = candidates[0]
    with_video = [n for n in subtitles if n != no_video]  # plan order
    # Of the clips with a video, in order: every 4th from the 2nd lacks its face file, from the 3rd its
    # WAV; from the 4th the WAV is 44.1 kHz stereo.
    no_faces, no_wav, resampled = with_video[1::4], with_video[2::4], with_video[3::4]
    assert no_faces and no_wav and resampled and extra not in no_faces + no_wav

    videos = {p.stem for p in (out / "video").glob("*.mp4")}
    wavs = {p.stem for p in (out / "audio").glob("*.wav")}
    faces = {p.parent.name for p in (out / "openface_face").glob("*/*.npy")}
    assert videos == set(with_video)
    assert wavs == set(with_video) - set(no_wav)
    assert faces == set(with_video) - set(no_faces) and extra in faces

    with wave.open(str(out / "audio" / f"{extra}.wav")) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)
        assert w.getnframes() == SECONDS * 16000
    for name in resampled:
        with wave.open(str(out / "audio" / f"{name}.wav")) as w:
            assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 44100, 2)
            assert abs(w.getnframes() - SECONDS * 44100) <= 64
        # Read back at 16 kHz mono it is the clip's own audio: its spectrum is the video track's (AAC
        # shifts the samples, so spectra, not samples, are compared), and not another clip's.
        back = read_audio(str(out / "audio" / f"{name}.wav"), 16000)
        assert abs(len(back) - SECONDS * 16000) <= 32
        own = spectrum_correlation(back, read_audio(str(out / "video" / f"{name}.mp4"), 16000))
        other = spectrum_correlation(back, read_audio(str(out / "video" / f"{extra}.mp4"), 16000))
        assert own > 0.9 and other < 0.5
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
        "track_all_candidates.csv",
        "truth.csv",
        "video",
    ]
    # The plain layout lists every unlabelled clip as a candidate (prepare requires the file).
    truth = pd.read_csv(tmp_path / "plain" / "truth.csv")
    candidates = pd.read_csv(tmp_path / "plain" / "track_all_candidates.csv")["name"].tolist()
    assert candidates == truth.loc[truth["split"] == "unlabeled", "name"].tolist()
    assert main(["synth", str(tmp_path / "x"), "--release-layout", "--unlabeled", "3"]) == 2
    assert "--candidates and --extra" in capsys.readouterr().err


def test_release_gaps_are_recorded_and_deterministic(tmp_path: Path) -> None:
    kwargs = dict(unlabeled=5, candidates=3, release_layout=True, duration_s=0.5, width=64, height=48)
    one = synthesize(str(tmp_path / "a"), 4, **kwargs)
    two = synthesize(str(tmp_path / "b"), 4, workers=2, **kwargs)
    assert (one.no_video, one.no_faces, one.no_wav, one.resampled_wav) == (
        two.no_video,
        two.no_faces,
        two.no_wav,
        two.resampled_wav,
    )
    for name in one.no_faces:
        assert not (tmp_path / "a" / "openface_face" / name).exists()
    for name in one.no_wav:
        assert not (tmp_path / "a" / "audio" / f"{name}.wav").exists()
    for name in one.resampled_wav:
        assert (tmp_path / "a" / "audio" / f"{name}.wav").read_bytes() == (
            tmp_path / "b" / "audio" / f"{name}.wav"
        ).read_bytes()
    assert len(one.no_faces) == len(one.no_wav) == 2 and len(one.resampled_wav) == 2
