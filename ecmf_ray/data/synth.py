"""Synthetic datasets in the MER2025 release layout, for tests, the demo and benchmarks.

Every clip is a real H.264/AAC mp4 whose three modalities each carry the emotion class:
- visual: a class colour and stripe pattern in the background, and a real face photo (so a face detector
  finds it) tinted per class, drifting slowly across the frame;
- audio: a class tone (pitch and loudness rhythm) in noise, 16 kHz mono;
- text: Chinese cue phrases per class among neutral filler (the ``english`` column a rough translation).

With probability ``hide_prob`` one modality of a clip carries another class's signal instead, so that
fusion has something to add over any single modality. ``truth.csv`` records the true label, the given
(possibly noisy) label and what was hidden, as held-out truth for tests and benchmarks.

``release_layout`` (``ecmf synth --release-layout``) writes the rest of the real release around it:
``track_all_candidates.csv`` (the unlabelled clips to predict; the others are extras, as the release's
~105k non-candidates), ``audio/NAME.wav`` (16-bit PCM) and ``openface_face/NAME/NAME.npy`` (OpenFace's
output as the baselines read it: uint8 BGR 112x112 face crops, one per frame, cut where the face is).
The real release's gaps are built in, deterministically: the first candidate has no video (nor audio or
faces); of the clips with a video, in order, every fourth from the second has no face file, every fourth
from the third no WAV, and every fourth from the fourth a WAV at 44.1 kHz stereo (the rest 16 kHz mono),
so that extraction falls back, and resamples, on some clips of even a small set (:func:`release_files`).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
import wave
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import resources

import av
import cv2
import numpy as np
import pandas as pd

from ecmf_ray.labels import EMOTIONS, NUM_CLASSES

SAMPLE_RATE = 16_000
MODALITIES: tuple[str, ...] = ("visual", "audio", "text")
LABELS_FILE = "track1_train_disdim.csv"
SUBTITLES_FILE = "subtitle_chieng.csv"
CANDIDATES_FILE = "track_all_candidates.csv"
TRUTH_FILE = "truth.csv"
AUDIO_DIR = "audio"
OPENFACE_DIR = "openface_face"
OPENFACE_SIZE = 112  # OpenFace's aligned face crops, as released
RESAMPLED_WAV = (44_100, 2)  # (rate, channels) of the release WAVs that are not 16 kHz mono

# Per-class signals, indexed like EMOTIONS (neutral, angry, happy, sad, worried, surprise).
BACKGROUND_RGB = np.array(
    [[128, 128, 128], [190, 45, 40], [225, 190, 50], [45, 75, 190], [115, 70, 150], [45, 175, 140]],
    dtype=np.float32,
)
STRIPE_SLOPE = (0.0, 1.0, -1.0, 0.5, -0.5, 2.0)  # stripe direction: x advances by slope per row
STRIPE_PERIOD = (0.20, 0.08, 0.12, 0.28, 0.16, 0.06)  # as a fraction of the frame width
FACE_GAIN = np.array(  # RGB gains on the face photo: moderate, so the face detector still fires
    [
        [1.0, 1.0, 1.0],
        [1.25, 0.8, 0.8],
        [1.15, 1.1, 0.75],
        [0.75, 0.85, 1.2],
        [0.85, 0.75, 0.95],
        [0.9, 1.2, 1.15],
    ],
    dtype=np.float32,
)
TONE_HZ = (240.0, 380.0, 520.0, 170.0, 300.0, 680.0)
RHYTHM_HZ = (0.0, 6.0, 4.0, 1.0, 2.5, 8.0)  # loudness modulation rate; 0 = a steady tone
VALENCE_MEAN = (0.0, -3.0, 3.0, -3.5, -2.0, 1.0)  # on MER's -5..5 scale
CLASS_WEIGHTS = (0.24, 0.2, 0.2, 0.14, 0.14, 0.08)  # imbalanced, as in MER2025 (surprise rarest)

# (chinese, english) cue phrases per class, and filler shared by all classes.
PHRASES: dict[str, tuple[tuple[str, str], ...]] = {
    "neutral": (
        ("会议安排在下午三点", "the meeting is at three this afternoon"),
        ("我刚从公司回来", "I just came back from the office"),
        ("这件事我们明天再说", "let's talk about it tomorrow"),
        ("你把文件放在桌子上吧", "put the file on the table"),
        ("好的，我知道了", "okay, I see"),
    ),
    "angry": (
        ("你怎么能这样对我", "how could you do this to me"),
        ("我真的受够了", "I've really had enough"),
        ("别再骗我了", "stop lying to me"),
        ("这简直太过分了", "this is outrageous"),
        ("给我出去", "get out"),
    ),
    "happy": (
        ("太好了，我们成功了", "great, we made it"),
        ("我今天特别开心", "I'm so happy today"),
        ("真是个好消息", "what good news"),
        ("谢谢你，我太高兴了", "thank you, I'm so glad"),
        ("哈哈，太有意思了", "haha, that's so funny"),
    ),
    "sad": (
        ("我真的很难过", "I'm really sad"),
        ("他再也不会回来了", "he will never come back"),
        ("我一个人好孤单", "I'm so lonely on my own"),
        ("对不起，都是我的错", "sorry, it's all my fault"),
        ("我忍不住想哭", "I can't help crying"),
    ),
    "worried": (
        ("我有点担心他", "I'm a bit worried about him"),
        ("万一出事了怎么办", "what if something goes wrong"),
        ("我心里很不踏实", "I feel uneasy"),
        ("她怎么还没到", "why hasn't she arrived yet"),
        ("这样下去可怎么办啊", "what will we do if this goes on"),
    ),
    "surprise": (
        ("什么？这怎么可能", "what? how is that possible"),
        ("天哪，真的吗", "oh my god, really"),
        ("我完全没想到", "I never expected that"),
        ("你怎么会在这里", "what are you doing here"),
        ("居然是你", "it's actually you"),
    ),
}
FILLER: tuple[tuple[str, str], ...] = (
    ("嗯", "um"),
    ("那个", "well"),
    ("你知道吗", "you know"),
    ("我跟你说", "let me tell you"),
    ("其实", "actually"),
    ("就是说", "I mean"),
)


@dataclass(frozen=True)
class SamplePlan:
    """Everything decided about one clip before rendering (cheap; rendering is separate)."""

    index: int
    name: str
    split: str  # train | unlabeled
    label: int  # true class index
    given: int | None  # the label in track1_train_disdim.csv (None for unlabeled)
    hidden: str | None  # the modality whose signal shows another class, or None
    hidden_as: int | None  # the class that modality shows instead
    valence: float | None
    chinese: str
    english: str

    @property
    def noisy(self) -> bool:
        return self.given is not None and self.given != self.label

    def signal(self, modality: str) -> int:
        """The class whose signal ``modality`` carries in this clip."""
        return self.hidden_as if self.hidden == modality and self.hidden_as is not None else self.label


@dataclass(frozen=True)
class SynthSummary:
    out_dir: str
    video_dir: str
    labels_csv: str
    subtitles_csv: str
    truth_csv: str
    n_labelled: int
    n_unlabeled: int
    n_noisy: int
    n_hidden: int
    seconds: float
    candidates_csv: str | None = None  # every unlabelled clip, or (release layout) the first `candidates`
    n_candidates: int = 0
    no_video: str | None = None  # release layout: the candidate listed without a video
    no_faces: tuple[str, ...] = ()  # ... the clips with a video but no openface_face/ file
    no_wav: tuple[str, ...] = ()  # ... the clips with a video but no audio/ file
    resampled_wav: tuple[str, ...] = ()  # ... the clips whose WAV is at RESAMPLED_WAV, not 16 kHz mono


def sample_name(index: int) -> str:
    return f"sample_{index:05d}"


def plan_samples(
    n: int, *, unlabeled: int = 0, label_noise: float = 0.0, seed: int = 0, hide_prob: float = 0.2
) -> list[SamplePlan]:
    """Labels, noise, hidden modalities and transcripts for ``n`` labelled + ``unlabeled`` clips."""
    if n < 0 or unlabeled < 0:
        raise ValueError("n and unlabeled must be >= 0")
    if not 0.0 <= label_noise <= 1.0 or not 0.0 <= hide_prob <= 1.0:
        raise ValueError("label_noise and hide_prob must be in [0, 1]")
    rng = np.random.default_rng(seed)
    total = n + unlabeled
    labels = rng.choice(NUM_CLASSES, size=total, p=CLASS_WEIGHTS)
    # Every class present once there are enough clips (small test sets would otherwise miss some).
    labels[: min(total, NUM_CLASSES)] = np.arange(min(total, NUM_CLASSES))
    labels = rng.permutation(labels)
    plans = []
    for i, label in enumerate(labels.tolist()):
        split = "train" if i < n else "unlabeled"
        given = None
        if split == "train":
            flip = rng.random() < label_noise
            given = int((label + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES) if flip else label
        hidden = hidden_as = None
        if rng.random() < hide_prob:
            hidden = MODALITIES[rng.integers(len(MODALITIES))]
            hidden_as = int((label + rng.integers(1, NUM_CLASSES)) % NUM_CLASSES)
        # Annotators give valence together with the (possibly wrong) discrete label.
        valence = None
        if given is not None:
            valence = round(float(np.clip(VALENCE_MEAN[given] + rng.normal(0.0, 0.8), -5.0, 5.0)), 3)
        text_class = hidden_as if hidden == "text" and hidden_as is not None else label
        chinese, english = _transcript(rng, EMOTIONS[text_class])
        plans.append(
            SamplePlan(
                i + 1, sample_name(i + 1), split, label, given, hidden, hidden_as, valence, chinese, english
            )
        )
    return plans


def _transcript(rng: np.random.Generator, emotion: str) -> tuple[str, str]:
    cues = PHRASES[emotion]
    picks = [cues[j] for j in rng.choice(len(cues), size=int(rng.integers(1, 3)), replace=False)]
    picks += [FILLER[j] for j in rng.choice(len(FILLER), size=int(rng.integers(1, 3)), replace=False)]
    order = rng.permutation(len(picks))
    return "，".join(picks[j][0] for j in order) + "。", ", ".join(picks[j][1] for j in order) + "."


@functools.lru_cache(maxsize=1)
def face_image() -> np.ndarray:
    """The bundled face photo (RGB uint8, square); see assets/README.md for its source and licence."""
    data = (resources.files("ecmf_ray.data") / "assets" / "face.jpg").read_bytes()
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _frames(
    rng: np.random.Generator, visual_class: int, n_frames: int, width: int, height: int, fps: int
) -> Iterator[tuple[np.ndarray, tuple[int, int, int]]]:
    """Frames of one clip with the face's square ``(x, y, side)``, yielded into a reused buffer (flat memory)."""
    # Background: class colour + diagonal stripes; shifting x by one period repeats the pattern, so a
    # frame is a slice of one precomputed wide strip and the stripes can scroll at no per-frame cost.
    period = max(8, round(STRIPE_PERIOD[visual_class] * width * rng.uniform(0.9, 1.1)))
    xs = np.arange(width + period, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    wave = np.sin(2 * np.pi * (xs + STRIPE_SLOPE[visual_class] * ys) / period)
    base = BACKGROUND_RGB[visual_class] + rng.uniform(-20, 20, size=3)
    contrast = rng.uniform(18, 30)
    strip = np.clip(base + contrast * wave[..., None], 0, 255).astype(np.uint8)

    size = int(height * rng.uniform(0.5, 0.62))
    face = cv2.resize(face_image(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    gain = FACE_GAIN[visual_class] * rng.uniform(0.95, 1.05)
    face = np.clip(face * gain, 0, 255).astype(np.uint8)

    # The face drifts on a slow ellipse around a random centre, staying inside the frame.
    cx = rng.uniform(0.3, 0.7) * width
    cy = rng.uniform(0.45, 0.55) * height
    ax, ay = rng.uniform(0.02, 0.06) * width, rng.uniform(0.01, 0.04) * height
    drift_hz, phase = rng.uniform(0.2, 0.5), rng.uniform(0, 2 * np.pi)
    scroll = rng.uniform(10, 30) / fps * (1 if rng.random() < 0.5 else -1)  # pixels per frame

    frame = np.empty((height, width, 3), dtype=np.uint8)
    for t in range(n_frames):
        offset = int(round(t * scroll)) % period
        frame[:] = strip[:, offset : offset + width]
        angle = 2 * np.pi * drift_hz * t / fps + phase
        x = int(np.clip(cx + ax * np.cos(angle) - size / 2, 0, width - size))
        y = int(np.clip(cy + ay * np.sin(angle) - size / 2, 0, height - size))
        frame[y : y + size, x : x + size] = face
        yield frame, (x, y, size)


def _audio(rng: np.random.Generator, audio_class: int, n_samples: int) -> np.ndarray:
    """A class tone with two harmonics, a class loudness rhythm, and white noise (float32, -1..1)."""
    t = np.arange(n_samples, dtype=np.float32) / SAMPLE_RATE
    f0 = TONE_HZ[audio_class] * rng.uniform(0.96, 1.04)
    tone = np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(4 * np.pi * f0 * t) + 0.25 * np.sin(6 * np.pi * f0 * t)
    rhythm_hz = RHYTHM_HZ[audio_class]
    if rhythm_hz:
        tone *= 0.6 + 0.4 * np.sin(2 * np.pi * rhythm_hz * t + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0.0, rng.uniform(0.1, 0.3), size=n_samples)
    return (0.25 * (tone + noise)).clip(-1, 1).astype(np.float32)


def _encode(
    path: str, frames: Iterable[np.ndarray], audio: np.ndarray | None, fps: int, width: int, height: int
) -> None:
    if width % 2 or height % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even width and height, got {width}x{height}")
    with av.open(path, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "26"}
        # One encoder thread: deterministic output, and parallelism comes from clips, not threads.
        video.codec_context.thread_count = 1
        video.codec_context.gop_size = 2 * fps  # a keyframe every 2 s, like typical camera clips
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=SAMPLE_RATE)
            sound.layout = "mono"
            sound.bit_rate = 48_000
        for frame in frames:
            # OpenCV's RGB->I420 (BT.601, limited range, as swscale's default) is ~2x faster than swscale.
            yuv = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
            container.mux(video.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")))
        container.mux(video.encode())
        if sound is not None:
            # The muxer interleaves packets by timestamp; the encoder re-chunks into AAC frames.
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, dtype=np.float32)[None, :], format="flt", layout="mono"
            )
            chunk.sample_rate = SAMPLE_RATE
            container.mux(sound.encode(chunk))
            container.mux(sound.encode())


def write_video(path: str, frames: np.ndarray, audio: np.ndarray | None, fps: int) -> None:
    """Write RGB ``frames`` (T, H, W, 3) uint8 and optional mono 16 kHz float32 ``audio`` as H.264/AAC mp4.

    ``audio=None`` writes a file with no audio stream at all.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    _encode(path, iter(frames), audio, fps, frames.shape[2], frames.shape[1])


def write_wav(path: str, audio: np.ndarray, rate: int = SAMPLE_RATE, channels: int = 1) -> None:
    """Mono float32 ``audio`` (-1..1, at :data:`SAMPLE_RATE`) as a 16-bit PCM WAV at ``rate`` with
    ``channels`` identical channels (resampled by FFmpeg's swresample where ``rate`` differs)."""
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    if (rate, channels) != (SAMPLE_RATE, 1):
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(format="s16", layout="stereo" if channels == 2 else "mono", rate=rate)
        chunks = [
            out.to_ndarray().reshape(-1) for out in [*resampler.resample(frame), *resampler.resample(None)]
        ]
        pcm = np.concatenate(chunks).astype("<i2")  # packed: channels interleaved
    with wave.open(path, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def openface_crop(frame: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """The face square of an RGB frame as OpenFace releases it: 112x112, BGR."""
    x, y, side = box
    crop = cv2.resize(
        frame[y : y + side, x : x + side], (OPENFACE_SIZE, OPENFACE_SIZE), interpolation=cv2.INTER_AREA
    )
    return cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)


@dataclass(frozen=True)
class _RenderJob:
    plan: SamplePlan
    path: str
    seed: int
    duration_s: float
    width: int
    height: int
    fps: int
    audio_path: str | None = None  # release layout: audio/NAME.wav
    audio_format: tuple[int, int] = (SAMPLE_RATE, 1)  # the WAV's (rate, channels)
    faces_path: str | None = None  # release layout: openface_face/NAME/NAME.npy


def _render(job: _RenderJob) -> None:
    # A generator per clip, seeded by (seed, index): the same clip whatever the worker count or order.
    rng = np.random.default_rng((job.seed, 1, job.plan.index))
    n_frames = max(1, round(job.duration_s * job.fps))
    scene = _frames(rng, job.plan.signal("visual"), n_frames, job.width, job.height, job.fps)
    crops: list[np.ndarray] = []

    def frames() -> Iterator[np.ndarray]:
        for frame, box in scene:
            if job.faces_path:
                crops.append(openface_crop(frame, box))
            yield frame

    audio = _audio(rng, job.plan.signal("audio"), round(job.duration_s * SAMPLE_RATE))
    _encode(job.path, frames(), audio, job.fps, job.width, job.height)
    if job.audio_path:
        write_wav(job.audio_path, audio, *job.audio_format)
    if job.faces_path:
        os.makedirs(os.path.dirname(job.faces_path), exist_ok=True)
        np.save(job.faces_path, np.stack(crops))


@dataclass(frozen=True)
class ReleaseFiles:
    """Which release files a clip with a video gets (see the module docstring)."""

    faces: bool
    wav: bool
    wav_format: tuple[int, int]  # (rate, channels)


def release_files(position: int) -> ReleaseFiles:
    """The release files of the clip at ``position`` among the clips with a video, in plan order."""
    kind = position % 4
    return ReleaseFiles(
        faces=kind != 1, wav=kind != 2, wav_format=RESAMPLED_WAV if kind == 3 else (SAMPLE_RATE, 1)
    )


def _render_jobs(
    plans: list[SamplePlan], out_dir: str, video_dir: str, release_layout: bool, no_video: str | None, **clip
) -> list[_RenderJob]:
    """One job per clip with a video; in the release layout with its WAV and face file per :func:`release_files`."""
    jobs = []
    for position, p in enumerate(q for q in plans if q.name != no_video):
        video_path = os.path.join(video_dir, f"{p.name}.mp4")
        if not release_layout:
            jobs.append(_RenderJob(p, video_path, **clip))
            continue
        files = release_files(position)
        jobs.append(
            _RenderJob(
                p,
                video_path,
                **clip,
                audio_path=os.path.join(out_dir, AUDIO_DIR, f"{p.name}.wav") if files.wav else None,
                audio_format=files.wav_format,
                faces_path=os.path.join(out_dir, OPENFACE_DIR, p.name, f"{p.name}.npy")
                if files.faces
                else None,
            )
        )
    return jobs


def _render_all(jobs: list[_RenderJob], workers: int) -> None:
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may hold Ray or torch threads that a fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for _ in pool.map(_render, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
                pass
    else:
        for job in jobs:
            _render(job)


def _write_tables(out_dir: str, plans: list[SamplePlan], listed: list[str]) -> dict[str, str]:
    """The release's CSVs (labels, subtitles, candidates) and the held-out truth; returns their paths."""
    labelled = [p for p in plans if p.split == "train"]
    paths = {
        "labels_csv": os.path.join(out_dir, LABELS_FILE),
        "subtitles_csv": os.path.join(out_dir, SUBTITLES_FILE),
        "truth_csv": os.path.join(out_dir, TRUTH_FILE),
        "candidates_csv": os.path.join(out_dir, CANDIDATES_FILE),
    }
    pd.DataFrame(
        {
            "name": [p.name for p in labelled],
            "discrete": [EMOTIONS[p.given] for p in labelled if p.given is not None],
            "valence": [p.valence for p in labelled],
        }
    ).to_csv(paths["labels_csv"], index=False)
    pd.DataFrame(
        {
            "name": [p.name for p in plans],
            "chinese": [p.chinese for p in plans],
            "english": [p.english for p in plans],
        }
    ).to_csv(paths["subtitles_csv"], index=False, encoding="utf-8")
    pd.DataFrame(
        {
            "name": [p.name for p in plans],
            "true_label": [EMOTIONS[p.label] for p in plans],
            "given_label": ["" if p.given is None else EMOTIONS[p.given] for p in plans],
            "noisy": [p.noisy for p in plans],
            "hidden": [p.hidden or "" for p in plans],
            "hidden_as": ["" if p.hidden_as is None else EMOTIONS[p.hidden_as] for p in plans],
            "split": [p.split for p in plans],
        }
    ).to_csv(paths["truth_csv"], index=False)
    pd.DataFrame({"name": listed}).to_csv(paths["candidates_csv"], index=False)
    return paths


def synthesize(
    out_dir: str,
    n: int,
    *,
    unlabeled: int = 0,
    label_noise: float = 0.0,
    seed: int = 0,
    duration_s: float = 3.0,
    width: int = 320,
    height: int = 180,
    fps: int = 25,
    hide_prob: float = 0.2,
    workers: int = 1,
    release_layout: bool = False,
    candidates: int = 0,
) -> SynthSummary:
    """Write ``n`` labelled and ``unlabeled`` unlabelled clips plus the MER2025 CSVs under ``out_dir``.

    track_all_candidates.csv lists every unlabelled clip; with ``release_layout`` only the first
    ``candidates`` (the rest are extras), and audio/ and openface_face/ are written too (see the module
    docstring).
    ``workers`` > 1 renders clips in that many processes; the output is identical either way.
    """
    if not 0 <= candidates <= unlabeled:
        raise ValueError(
            f"candidates must be between 0 and the {unlabeled} unlabelled clips, got {candidates}"
        )
    if candidates and not release_layout:
        raise ValueError("candidates are part of the release layout (release_layout=True)")
    start = time.perf_counter()
    plans = plan_samples(n, unlabeled=unlabeled, label_noise=label_noise, seed=seed, hide_prob=hide_prob)
    video_dir = os.path.join(out_dir, "video")
    os.makedirs(video_dir, exist_ok=True)
    # The plain layout lists every unlabelled clip as a candidate; the release layout the first `candidates`.
    listed = [p.name for p in plans if p.split == "unlabeled"][: candidates if release_layout else None]
    no_video = listed[0] if release_layout and listed else None
    if release_layout:
        os.makedirs(os.path.join(out_dir, AUDIO_DIR), exist_ok=True)
    jobs = _render_jobs(
        plans,
        out_dir,
        video_dir,
        release_layout,
        no_video,
        seed=seed,
        duration_s=duration_s,
        width=width,
        height=height,
        fps=fps,
    )
    _render_all(jobs, workers)
    paths = _write_tables(out_dir, plans, listed)
    return SynthSummary(
        out_dir=out_dir,
        video_dir=video_dir,
        **paths,
        n_labelled=sum(p.split == "train" for p in plans),
        n_unlabeled=sum(p.split == "unlabeled" for p in plans),
        n_noisy=sum(p.noisy for p in plans),
        n_hidden=sum(p.hidden is not None for p in plans),
        seconds=time.perf_counter() - start,
        n_candidates=len(listed),
        no_video=no_video,
        no_faces=tuple(j.plan.name for j in jobs if release_layout and not j.faces_path),
        no_wav=tuple(j.plan.name for j in jobs if release_layout and not j.audio_path),
        resampled_wav=tuple(j.plan.name for j in jobs if j.audio_path and j.audio_format == RESAMPLED_WAV),
    )


def write_broken_videos(video_dir: str) -> dict[str, str]:
    """Write one file per unreadable case into ``video_dir``; returns ``{name: kind}``.

    Kinds: ``empty`` (zero bytes), ``not_video`` (text named .mp4), ``truncated`` (a valid clip cut to half
    its bytes, losing the index at its end), ``no_audio`` (a valid clip with no audio stream).
    """
    os.makedirs(video_dir, exist_ok=True)
    kinds = {
        "broken_empty": "empty",
        "broken_text": "not_video",
        "broken_truncated": "truncated",
        "broken_noaudio": "no_audio",
    }
    paths = {name: os.path.join(video_dir, f"{name}.mp4") for name in kinds}
    with open(paths["broken_empty"], "wb"):
        pass
    with open(paths["broken_text"], "w", encoding="utf-8") as f:
        f.write("this is not a video, only a text file with an .mp4 name\n")

    rng = np.random.default_rng(0)
    width, height, fps, seconds = 320, 180, 25, 2.0
    # _frames reuses one buffer, so copy each frame before stacking.
    frames = np.stack(
        [frame.copy() for frame, _ in _frames(rng, 0, round(seconds * fps), width, height, fps)]
    )
    _encode(
        paths["broken_truncated"],
        iter(frames),
        _audio(rng, 0, round(seconds * SAMPLE_RATE)),
        fps,
        width,
        height,
    )
    with open(paths["broken_truncated"], "r+b") as f:
        f.truncate(os.path.getsize(paths["broken_truncated"]) // 2)
    write_video(paths["broken_noaudio"], frames, None, fps)
    return kinds
