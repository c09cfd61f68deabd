"""Where each clip's faces and audio come from: the release's own files, or the video itself.

The MER2025 release ships, beside ``video/``, ``openface_face/NAME/NAME.npy`` (OpenFace's face crops, the
faces the paper encodes) and ``audio/NAME.wav`` (the audio track, extracted beforehand). Per branch,
``extract.faces.source`` and ``extract.audio.source`` pick:

- ``auto`` (the default): per clip, the release's file where it exists, else the video (faces detected in
  its sampled frames; audio decoded from its track);
- ``openface`` / ``wav``: the release's file only; a clip without one is a per-row error naming the file;
- ``detect`` / ``video``: the video only, as if the release had no such files.

A file that exists but cannot be read is a per-row error naming it, whatever the setting. Each feature
row records the source it came from (the ``source`` column: ``openface|detect``, ``wav|video``), and
``ecmf extract`` ends with one line of the shares (:func:`report_sources`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray import features, storage
from ecmf_ray.extract import decode, decoder_process

FACE_SOURCES: tuple[str, ...] = ("auto", "openface", "detect")
AUDIO_SOURCES: tuple[str, ...] = ("auto", "wav", "video")
WAV_DIR = "audio"
# What a feature row's ``source`` says when its input came from the release's file, or from the video.
RELEASE_SOURCE = {"face": "openface", "audio": "wav"}
VIDEO_SOURCE = {"face": "detect", "audio": "video"}


class NoWavFile(FileNotFoundError):
    """The clip has no release WAV file and ``extract.audio.source`` is ``wav``."""


class BadWavFile(ValueError):
    """A release WAV file that cannot be decoded as audio."""


def _checked(value: Any, choices: tuple[str, ...], key: str) -> str:
    if str(value) not in choices:
        raise ValueError(f"{key} must be one of {choices}, not {value!r}")
    return str(value)


def face_source(cfg_faces: Any) -> str:
    """``extract.faces.source``, checked."""
    return _checked(cfg_faces.source, FACE_SOURCES, "extract.faces.source")


def audio_source(cfg_audio: Any) -> str:
    """``extract.audio.source``, checked."""
    return _checked(cfg_audio.source, AUDIO_SOURCES, "extract.audio.source")


def check_sources(cfg_extract: Any) -> None:
    """Fail on an unknown face or audio source (before any clip is decoded)."""
    face_source(cfg_extract.faces)
    audio_source(cfg_extract.audio)


def release_path(video_path: str, folder: str, configured_dir: str | None, *relative: str) -> str:
    """``<configured_dir>/<relative...>``, or by default ``<folder>/<relative...>`` beside ``video/``."""
    if configured_dir:
        root = str(configured_dir)
    elif storage.is_remote(video_path):
        root = video_path.rstrip("/").rsplit("/", 2)[0] + "/" + folder
    else:
        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(video_path))), folder)
    return storage.join(root, *relative)


def clip_name(video_path: str) -> str:
    """``NAME`` of ``.../NAME.mp4``."""
    return os.path.splitext(os.path.basename(video_path.rstrip("/")))[0]


def wav_path(video_path: str, wav_dir: str | None) -> str:
    """``<wav_dir>/NAME.wav`` for ``.../video/NAME.mp4``; by default ``audio/`` beside ``video/``."""
    return release_path(video_path, WAV_DIR, wav_dir, f"{clip_name(video_path)}.wav")


def read_wav(path: str, sample_rate: int, timeout_s: float) -> np.ndarray:
    """A release WAV as mono float32 at ``sample_rate`` (resampled and down-mixed if it is not already),
    decoded in the decoder child under ``timeout_s``; an unreadable file raises :class:`BadWavFile`."""
    if not storage.exists(path):
        raise NoWavFile(f"no release audio file {path}")
    try:
        with decode.local_file(path) as local:
            return decoder_process.call(decode.read_audio, (local, sample_rate), timeout_s, "wav decode")
    except (decoder_process.DecodeTimeout, decoder_process.DecoderDied):
        raise
    except Exception as err:
        raise BadWavFile(f"{path}: cannot read as audio ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------ the shares


def _shares(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def source_shares(run_dir: str, branches: list[str]) -> dict[str, Any]:
    """From the consolidated features: clips per face and audio source, and the share of sampled frames
    with no face (the mean over face rows of 1 - face_ratio; clips are sampled to the same frame count)."""
    out: dict[str, Any] = {}
    for branch in ("face", "audio"):
        if branch not in branches or not storage.exists(features.branch_dir(run_dir, branch)):
            continue
        table = storage.read_table(features.branch_dir(run_dir, branch)).to_pandas()
        out[branch] = _shares(table["source"].dropna()) if "source" in table else {}
        if branch == "face":
            out["no_face_frames"] = float((1.0 - table["face_ratio"]).mean()) if len(table) else 0.0
    return out


def _describe(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{k} {v / total:.0%} ({v})" for k, v in counts.items()) if total else "none"


def report_sources(run_dir: str, branches: list[str]) -> dict[str, Any]:
    """Print one line of where the faces and audio came from; returns :func:`source_shares`."""
    shares = source_shares(run_dir, branches)
    parts = []
    if "face" in shares:
        parts.append(f"faces from {_describe(shares['face'])}")
        parts.append(f"frames with no face {shares['no_face_frames']:.1%}")
    if "audio" in shares:
        parts.append(f"audio from {_describe(shares['audio'])}")
    if parts:
        print("extract: " + "; ".join(parts))
    return shares
