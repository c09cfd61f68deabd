"""The CPU stage: decode each clip, find faces, and emit small uint8 crops and audio samples.

Decoding and face detection are fused into one stage so that only resized crops ever leave it: the
decoded frames (short side ``extract.frames.size``) die in the worker that made them. Where the release's
own files serve (``extract.faces.source`` / ``extract.audio.source``, see :mod:`ecmf_ray.extract.sources`)
the face crops come from its ``.npy`` file and the audio from its ``.wav``, read here too (CPU work, kept
out of the encoder actors), and the video is decoded only if another branch still needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ecmf_ray.extract import decode, decoder_process, faces, sources
from ecmf_ray.extract.rows import (
    SOURCED_BRANCHES,
    VISUAL_BRANCHES,
    count_column,
    empty_errors,
    error_cell,
    error_column,
    source_column,
)


@dataclass
class ClipMedia:
    """What one clip contributes to the encoders, with a failure per branch where there was one."""

    frames: np.ndarray | None = None  # (K, S, S, 3) centre crops for the frame branch
    faces: np.ndarray | None = None  # (n, F, F, 3) face crops (or centre crops, per the no-face policy)
    face_ratio: float = float("nan")
    audio: np.ndarray | None = None  # float32 mono samples
    errors: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # face: openface | detect; audio: wav | video


def decode_clip(path: str, cfg: Any) -> ClipMedia:
    """Decode one clip for the configured branches; every failure becomes an ``errors`` entry."""
    e = cfg.extract
    branches = set(e.branches)
    media = ClipMedia()
    # Settled from the release's file (its content or an error): the video is not needed for that branch.
    if "face" in branches and _add_release_faces(media, path, e):
        branches.discard("face")
    if "audio" in branches and _add_release_audio(media, path, e):
        branches.discard("audio")
    from_video = branches - {"text"}
    if not from_video:
        return media
    try:
        with decode.local_file(path) as local:
            if branches & set(VISUAL_BRANCHES):
                _add_frames(media, local, e, branches)
            if "audio" in branches:
                _add_audio(media, local, e)
    except Exception as err:  # the file itself: missing, unreadable, failed download
        media.errors.update({b: error_cell("open", err) for b in from_video})
    return media


def _add_release_faces(media: ClipMedia, video_path: str, e: Any) -> bool:
    """Crops from the clip's OpenFace file; False: detect in the frames instead."""
    source = sources.face_source(e.faces)
    if source == "detect":
        return False
    path = faces.openface_path(video_path, e.faces.openface_dir)

    def read() -> None:
        media.faces = faces.openface_crops(faces.read_openface(path), int(e.frames.num), int(e.faces.size))
        media.face_ratio = 1.0  # every OpenFace frame is a face

    return _from_release(media, "face", "faces", source == "auto", faces.NoFaceFile, read)


def _add_release_audio(media: ClipMedia, video_path: str, e: Any) -> bool:
    """Samples from the clip's release WAV; False: decode the video's audio track instead."""
    source = sources.audio_source(e.audio)
    if source == "video":
        return False
    path = sources.wav_path(video_path, e.audio.wav_dir)

    def read() -> None:
        media.audio = sources.read_wav(path, int(e.audio.sample_rate), float(e.decode.timeout_s))

    return _from_release(media, "audio", "decode_audio", source == "auto", sources.NoWavFile, read)


def _from_release(
    media: ClipMedia, branch: str, stage: str, auto: bool, missing: type[Exception], read: Callable[[], None]
) -> bool:
    """Run ``read`` (the release file into ``media``); True when that settles the branch (its content or
    an error), False when the file is missing and ``auto`` leaves the branch to the video."""
    try:
        read()
    except missing as err:
        if auto:
            return False
        media.errors[branch] = error_cell(stage, err)
        return True
    except Exception as err:  # a malformed file fails only its own row
        media.errors[branch] = error_cell(stage, err)
        return True
    media.sources[branch] = sources.RELEASE_SOURCE[branch]
    return True


def _add_frames(media: ClipMedia, local: str, e: Any, branches: set[str]) -> None:
    visual = [b for b in VISUAL_BRANCHES if b in branches]
    size, num, threads = int(e.frames.size), int(e.frames.num), int(e.decode.num_threads)
    try:
        frames = decoder_process.call(
            decode.read_frames,
            (local, size, num, e.frames.fps, threads),
            float(e.decode.timeout_s),
            "video decode",
        )
    except Exception as err:
        media.errors.update({b: error_cell("decode_video", err) for b in visual})
        return
    if "frame" in branches:
        media.frames = decode.center_square(frames)
    if "face" in branches:
        _add_faces(media, frames, e.faces)


def _add_audio(media: ClipMedia, local: str, e: Any) -> None:
    rate = int(e.audio.sample_rate)
    try:
        media.audio = decoder_process.call(
            decode.read_audio, (local, rate), float(e.decode.timeout_s), "audio decode"
        )
    except Exception as err:
        media.errors["audio"] = error_cell("decode_audio", err)
        return
    media.sources["audio"] = sources.VIDEO_SOURCE["audio"]


def _add_faces(media: ClipMedia, frames: np.ndarray, cfg_faces: Any) -> None:
    try:
        boxes = faces.build_detector(cfg_faces).detect(frames)
        crops, found = faces.face_crops(
            frames,
            boxes,
            size=int(cfg_faces.size),
            margin=float(cfg_faces.margin),
            no_face=str(cfg_faces.no_face),
        )
        if len(crops) == 0:
            raise faces.NoFaceFound(f"no face in any of the {len(frames)} sampled frames (no_face=skip)")
    except Exception as err:
        media.errors["face"] = error_cell("faces", err)
        return
    media.faces = crops
    media.face_ratio = float(found.mean())
    media.sources["face"] = sources.VIDEO_SOURCE["face"]


def _padded(items: list[np.ndarray | None], k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack per-video crops into a fixed ``(B, k, size, size, 3)`` block plus the real counts."""
    out = np.zeros((len(items), k, size, size, 3), dtype=np.uint8)
    counts = np.zeros(len(items), dtype=np.int32)
    for i, item in enumerate(items):
        if item is not None:
            out[i, : len(item)] = item
            counts[i] = len(item)
    return out, counts


def decode_batch(batch: dict[str, np.ndarray], cfg: Any) -> dict[str, np.ndarray]:
    """The decode+faces stage over a batch: ``video_id, video_path, text`` in; crops, audio and errors out.

    Crops are padded to ``frames.num`` per video (fixed-shape tensors move through Ray's object store
    without copies); ``<branch>_n`` holds how many are real.
    """
    e = cfg.extract
    branches = list(e.branches)
    # Parallelism comes from many decode tasks; OpenCV's own threads would only oversubscribe the cores.
    cv2.setNumThreads(int(e.decode.num_threads))
    media = [decode_clip(str(path), cfg) for path in batch["video_path"]]
    out: dict[str, np.ndarray] = {"video_id": batch["video_id"], "text": batch["text"]}
    out.update(empty_errors(len(media), branches))
    for i, item in enumerate(media):
        for branch, cell in item.errors.items():
            out[error_column(branch)][i] = cell
    k = int(e.frames.num)
    if "frame" in branches:
        out["frames"], out[count_column("frame")] = _padded([m.frames for m in media], k, int(e.frames.size))
    if "face" in branches:
        out["faces"], out[count_column("face")] = _padded([m.faces for m in media], k, int(e.faces.size))
        out["face_ratio"] = np.array([m.face_ratio for m in media], dtype=np.float32)
    if "audio" in branches:
        # Bytes, not a tensor column: clips differ in length.
        out["audio"] = np.array([b"" if m.audio is None else m.audio.tobytes() for m in media], dtype=object)
    for branch in SOURCED_BRANCHES:
        if branch in branches:
            out[source_column(branch)] = np.array([m.sources.get(branch, "") for m in media], dtype=object)
    return out
