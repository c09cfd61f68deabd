"""The synthetic MER2025-layout generator: files, labels, determinism, readable media, class signals."""

from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pandas as pd
import pytest

from ecmf_ray.data.synth import (
    BACKGROUND_RGB,
    MODALITIES,
    SAMPLE_RATE,
    TONE_HZ,
    plan_samples,
    synthesize,
    write_broken_videos,
    write_video,
)
from ecmf_ray.labels import EMOTION_INDEX, EMOTIONS

N, UNLABELED, SECONDS, FPS = 12, 4, 2.0, 25


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(
        str(out), N, unlabeled=UNLABELED, label_noise=0.25, seed=3, duration_s=SECONDS, hide_prob=0.4
    )
    truth = pd.read_csv(summary.truth_csv, dtype=str, keep_default_na=False)
    return summary, truth


def video_path(summary, name: str) -> str:
    return str(Path(summary.video_dir) / f"{name}.mp4")


def signal_class(row, modality: str) -> int:
    """The class a clip's ``modality`` shows: the true one unless that modality was hidden."""
    return EMOTION_INDEX[row.hidden_as if row.hidden == modality else row.true_label]


def test_layout_and_csvs(dataset):
    summary, truth = dataset
    labels = pd.read_csv(summary.labels_csv)
    subtitles = pd.read_csv(summary.subtitles_csv, encoding="utf-8")
    assert list(labels.columns) == ["name", "discrete", "valence"] and len(labels) == N
    assert list(subtitles.columns) == ["name", "chinese", "english"] and len(subtitles) == N + UNLABELED
    assert set(labels["discrete"]) <= set(EMOTIONS) and labels["valence"].between(-5, 5).all()
    assert subtitles["chinese"].str.contains(r"[\u4e00-\u9fff]").all()
    assert sorted(p.stem for p in Path(summary.video_dir).glob("*.mp4")) == sorted(subtitles["name"])

    assert list(truth.columns) == [
        "name",
        "true_label",
        "given_label",
        "noisy",
        "hidden",
        "hidden_as",
        "split",
    ]
    train = truth[truth["split"] == "train"]
    assert len(train) == N and (truth["split"] == "unlabeled").sum() == UNLABELED
    assert list(train["given_label"]) == list(labels["discrete"])
    assert (truth.loc[truth["split"] == "unlabeled", "given_label"] == "").all()
    assert ((train["given_label"] != train["true_label"]) == (train["noisy"] == "True")).all()
    assert set(truth["hidden"]) <= {"", *MODALITIES}
    assert set(truth["true_label"]) == set(EMOTIONS)  # every class present once n >= 6
    assert (summary.n_labelled, summary.n_unlabeled) == (N, UNLABELED)


def test_plan_rates():
    plans = plan_samples(3000, unlabeled=1000, label_noise=0.3, seed=7, hide_prob=0.2)
    train = [p for p in plans if p.split == "train"]
    assert len(train) == 3000 and all(p.given is None for p in plans if p.split == "unlabeled")
    assert 0.27 < np.mean([p.noisy for p in train]) < 0.33
    hidden = [p for p in plans if p.hidden]
    assert 0.18 < len(hidden) / len(plans) < 0.22
    assert {p.hidden for p in hidden} == set(MODALITIES) and all(p.hidden_as != p.label for p in hidden)
    assert not any(p.noisy for p in plan_samples(200, label_noise=0.0, seed=7))


def test_deterministic(tmp_path: Path):
    runs = [
        synthesize(str(tmp_path / d), 3, unlabeled=1, label_noise=0.5, seed=5, duration_s=0.4) for d in "ab"
    ]
    other = synthesize(str(tmp_path / "c"), 3, unlabeled=1, label_noise=0.5, seed=6, duration_s=0.4)
    for attr in ("labels_csv", "subtitles_csv", "truth_csv"):
        assert Path(getattr(runs[0], attr)).read_bytes() == Path(getattr(runs[1], attr)).read_bytes()
    assert Path(runs[0].subtitles_csv).read_bytes() != Path(other.subtitles_csv).read_bytes()
    clip = "video/sample_00002.mp4"
    assert (tmp_path / "a" / clip).read_bytes() == (tmp_path / "b" / clip).read_bytes()


def test_decord_reads_frames_and_audio(dataset):
    summary, truth = dataset
    path = video_path(summary, truth["name"].iloc[0])
    vr = decord.VideoReader(path)
    assert len(vr) == round(SECONDS * FPS)
    assert vr.get_batch([0, 10, len(vr) - 1]).asnumpy().shape == (3, 180, 320, 3)
    audio = decord.AudioReader(path, sample_rate=SAMPLE_RATE, mono=True)
    # AAC adds up to two frames of encoder priming/padding.
    assert audio.shape[0] == 1 and abs(audio.shape[1] - SECONDS * SAMPLE_RATE) <= 2 * 1024 + 64


def test_haar_cascade_finds_the_face(dataset):
    summary, truth = dataset
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = total = 0
    for name in truth["name"].iloc[:6]:
        vr = decord.VideoReader(video_path(summary, name))
        for frame in vr.get_batch(list(range(0, len(vr), 10))).asnumpy():
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            found += len(cascade.detectMultiScale(gray, 1.1, 5, minSize=(30, 30))) > 0
            total += 1
    assert found / total >= 0.9


def test_class_signals_are_separable(dataset):
    """Nearest class colour (left edge, never covered by the face) and tone pitch give each clip's class."""
    summary, truth = dataset
    for row in truth.itertuples():
        path = video_path(summary, row.name)
        frame = decord.VideoReader(path)[0].asnumpy().astype(np.float32)
        colour = frame[:, :16].reshape(-1, 3).mean(axis=0)
        assert np.argmin(((BACKGROUND_RGB - colour) ** 2).sum(axis=1)) == signal_class(row, "visual")

        audio = decord.AudioReader(path, sample_rate=SAMPLE_RATE, mono=True)[:].asnumpy()[0]
        spectrum = np.abs(np.fft.rfft(audio))
        freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
        band = (freqs > 100) & (freqs < 1000)
        pitch = freqs[band][np.argmax(spectrum[band])]
        assert np.argmin(np.abs(np.log(np.array(TONE_HZ) / pitch))) == signal_class(row, "audio")


def test_broken_videos(tmp_path: Path):
    kinds = write_broken_videos(str(tmp_path))
    assert sorted(kinds.values()) == ["empty", "no_audio", "not_video", "truncated"]
    for name, kind in kinds.items():
        path = str(tmp_path / f"{name}.mp4")
        if kind == "no_audio":
            assert len(decord.VideoReader(path)) > 0
            with av.open(path) as container:
                assert len(container.streams.audio) == 0 and len(container.streams.video) == 1
            with pytest.raises(decord.DECORDError, match="audio stream"):
                decord.AudioReader(path, sample_rate=SAMPLE_RATE, mono=True)
            continue
        with pytest.raises((RuntimeError, decord.DECORDError)):
            decord.VideoReader(path)
        with pytest.raises(av.error.InvalidDataError):
            av.open(path)


def test_write_video_checks_input(tmp_path: Path):
    frames = np.zeros((2, 32, 48, 3), dtype=np.uint8)
    write_video(str(tmp_path / "ok.mp4"), frames, np.zeros(1600, dtype=np.float32), 10)
    assert len(decord.VideoReader(str(tmp_path / "ok.mp4"))) == 2
    with pytest.raises(ValueError, match="even"):
        write_video(str(tmp_path / "odd.mp4"), np.zeros((2, 31, 48, 3), dtype=np.uint8), None, 10)
    with pytest.raises(ValueError, match="uint8"):
        write_video(str(tmp_path / "f.mp4"), frames.astype(np.float32), None, 10)
