"""The clip's frames and audio as chat content parts, in the OpenAI format vLLM serves for Qwen2.5-Omni.

Each sampled frame is one ``image_url`` part holding a base64 JPEG data URL; the audio is one
``input_audio`` part holding a base64 16 kHz mono 16-bit WAV. ``enrich.media_limits`` bounds the
request: how many frames, their short side, and how many seconds of audio. Decoding uses the extract
stage's own decoders and runs in Ray Data tasks (:func:`attach_media`), never on the driver.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray.extract.decode import NoAudioStream, local_file, read_audio, read_frames

SAMPLE_RATE = 16_000  # what Qwen2.5-Omni's audio encoder takes
# A decode task is mostly decoder work: one CPU each.
TASK_NUM_CPUS = 1


def image_part(frame: np.ndarray, quality: int) -> dict[str, Any]:
    """One RGB uint8 frame ``(H, W, 3)`` as an ``image_url`` part with a JPEG data URL."""
    import cv2

    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    url = "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono float audio in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def audio_part(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    data = base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def media_parts(path: str, media: Sequence[str], limits: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The content parts for one clip: its sampled frames, then its audio (none if it has no audio stream).

    Any other decoding failure raises: the row then carries the error instead of a request.
    """
    parts: list[dict[str, Any]] = []
    with local_file(path) as local:
        if "frames" in media:
            frames = read_frames(
                local, int(limits["short_side"]), int(limits["frames"]), None, int(limits["decode_threads"])
            )
            parts += [image_part(f, int(limits["jpeg_quality"])) for f in frames]
        if "audio" in media:
            try:
                audio = read_audio(local, SAMPLE_RATE)
            except NoAudioStream:
                return parts  # a silent clip is still worth watching
            parts.append(audio_part(audio[: int(float(limits["audio_s"]) * SAMPLE_RATE)]))
    return parts


def attach_media(batch: pd.DataFrame, media: Sequence[str], limits: Mapping[str, Any]) -> pd.DataFrame:
    """Ray Data task: put each row's media parts in front of its user message's text.

    A clip that cannot be decoded gets ``error`` and no payload (it is not sent); other rows go on.
    """
    payloads: list[str | None] = []
    errors: list[str | None] = []
    for path, payload, error in zip(batch["video_path"], batch["payload"], batch["error"], strict=True):
        if pd.isna(payload) or not pd.isna(error):
            payloads.append(None)
            errors.append(None if pd.isna(error) else error)
            continue
        try:
            parts = media_parts(str(path), media, limits)
        except Exception as err:  # any decoder failure is this row's error, not the batch's
            payloads.append(None)
            errors.append(f"media: {type(err).__name__}: {err}"[:500])
            continue
        body = json.loads(payload)
        body["messages"][-1]["content"] = parts + body["messages"][-1]["content"]
        payloads.append(json.dumps(body, ensure_ascii=False))
        errors.append(None)
    # object dtype: pandas would otherwise read a str column's None as NaN.
    return batch.assign(
        payload=pd.Series(payloads, index=batch.index, dtype=object),
        error=pd.Series(errors, index=batch.index, dtype=object),
    )
