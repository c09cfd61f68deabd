"""Decoding one clip: K sampled RGB frames (decord, resized while decoding) and 16 kHz mono audio (PyAV).

Callers run :func:`read_frames` and :func:`read_audio` in a decoder child process under a deadline
(:mod:`ecmf_ray.extract.decoder_process`): decord can hang on some files, and a hung call must not stall
the pipeline nor keep running once it has been given up. PyAV, not decord's AudioReader, reads audio:
the latter leaks memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import av
import numpy as np

from ecmf_ray import storage


class NoAudioStream(ValueError):
    """The container has no audio stream."""


class NoVideoStream(ValueError):
    """The container has no video stream, or no frames."""


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path for ``path``; remote files (s3://) are copied to a temporary file first."""
    if not storage.is_remote(path):
        local = os.path.expanduser(path)
        # Anything but a folder goes to the decoder (a named pipe or a device too): what it cannot read
        # fails there, and what blocks it times out there.
        if not os.path.exists(local) or os.path.isdir(local):
            raise FileNotFoundError(f"no such file: {path}")
        yield local
        return
    suffix = os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(storage.read_bytes(path))
        tmp.flush()
        yield tmp.name


def sample_indices(n_frames: int, avg_fps: float, num: int, fps: float | None = None) -> np.ndarray:
    """Frame indices to decode: ``num`` uniformly spread (segment centres), or every 1/``fps`` s capped at ``num``."""
    if n_frames <= 0:
        raise NoVideoStream("the video has no frames")
    if fps:
        step = max(avg_fps / fps, 1.0) if avg_fps > 0 else 1.0
        candidates = np.unique(np.floor(np.arange(0.0, n_frames, step)).astype(np.int64))
    else:
        candidates = np.arange(n_frames, dtype=np.int64)
    k = min(int(num), len(candidates))
    centres = np.floor((np.arange(k) + 0.5) * len(candidates) / k).astype(np.int64)
    return candidates[centres]


def resized_dims(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` with the short side at ``short_side``, aspect kept, both even."""
    scale = short_side / min(height, width)
    h = max(short_side, 2 * round(height * scale / 2))
    w = max(short_side, 2 * round(width * scale / 2))
    return h, w


def center_square(frames: np.ndarray) -> np.ndarray:
    """Centre crop ``(K, H, W, 3)`` to ``(K, S, S, 3)`` with S the short side (CLIP's own centre crop)."""
    height, width = frames.shape[1:3]
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return np.ascontiguousarray(frames[:, y0 : y0 + side, x0 : x0 + side])


def probe_video(path: str) -> tuple[int, int]:
    """``(height, width)`` of the first video stream, from the container header only."""
    with av.open(path) as container:
        if not container.streams.video:
            raise NoVideoStream("the file has no video stream")
        ctx = container.streams.video[0].codec_context
        if not ctx.width or not ctx.height:
            raise NoVideoStream("the video stream has no frame size")
        return ctx.height, ctx.width


def read_frames(path: str, short_side: int, num: int, fps: float | None, num_threads: int) -> np.ndarray:
    """Sampled RGB frames ``(K, H', W', 3)`` uint8, resized by the decoder to a ``short_side`` short side."""
    import decord

    height, width = probe_video(path)
    h, w = resized_dims(height, width, short_side)
    reader = decord.VideoReader(path, width=w, height=h, num_threads=num_threads)
    indices = sample_indices(len(reader), reader.get_avg_fps(), num, fps)
    frames = reader.get_batch(indices.tolist()).asnumpy()
    del reader  # decord's memory grows with seeks; release the context before the next clip
    return frames


def read_audio(path: str, sample_rate: int) -> np.ndarray:
    """The first audio stream (of a video, or of a WAV file) as mono float32 at ``sample_rate``: resampled
    and down-mixed by FFmpeg's swresample where the stream is at another rate or has more channels."""
    with av.open(path) as container:
        if not container.streams.audio:
            raise NoAudioStream("the file has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not chunks:
        raise NoAudioStream("the audio stream holds no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)
