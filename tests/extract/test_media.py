"""Decoding and faces, without Ray: sampling, crops, timeouts, and what each broken file reports."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import MISSING, extract_config

from ecmf_ray.data.synth import face_image
from ecmf_ray.extract import decode, faces
from ecmf_ray.extract.media import decode_batch


def test_sample_indices_segment_centres() -> None:
    assert decode.sample_indices(100, 25.0, 4).tolist() == [12, 37, 62, 87]
    assert decode.sample_indices(3, 25.0, 16).tolist() == [0, 1, 2]  # short clip: every frame once
    # 2 fps from 25 fps over 4 s: one frame every 12.5, capped at 5 spread over the 8 candidates.
    assert decode.sample_indices(100, 25.0, 5, fps=2.0).tolist() == [0, 25, 50, 62, 87]
    with pytest.raises(decode.NoVideoStream):
        decode.sample_indices(0, 25.0, 4)


def test_resized_dims_and_center_square() -> None:
    assert decode.resized_dims(360, 640, 224) == (224, 398)
    assert decode.resized_dims(640, 360, 224) == (398, 224)
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    assert np.array_equal(decode.center_square(frames), frames[:, :, 1:5])


def test_square_box_margin_and_edges() -> None:
    # A 20x20 face grown by 25% each side: a 30x30 square on the same centre.
    assert faces.square_box(np.array([40, 40, 20, 20]), 0.25, 100, 200) == (35, 35, 65, 65)
    # Near the left/top edge the square shifts inside instead of shrinking.
    assert faces.square_box(np.array([0, 0, 20, 20]), 0.25, 100, 200) == (0, 0, 30, 30)
    # Taller than the frame allows: capped at the short side.
    assert faces.square_box(np.array([50, 10, 80, 80]), 0.5, 100, 200) == (40, 0, 140, 100)
    assert faces.center_box(100, 200) == (50, 0, 150, 100)


def test_largest_box() -> None:
    assert faces.largest_box(np.zeros((0, 4))) is None
    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 20], [1, 1, 20, 20]], dtype=np.float32)
    assert faces.largest_box(boxes).tolist() == [5, 5, 30, 20]


def test_face_crops_policies() -> None:
    frames = np.zeros((3, 60, 80, 3), np.uint8)
    boxes = [
        np.array([[10, 10, 20, 20]], np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros((0, 4), np.float32),
    ]
    crops, found = faces.face_crops(frames, boxes, size=32, margin=0.1, no_face="center")
    assert crops.shape == (3, 32, 32, 3) and found.tolist() == [True, False, False]
    crops, found = faces.face_crops(frames, boxes, size=32, margin=0.1, no_face="skip")
    assert crops.shape == (1, 32, 32, 3) and found.mean() == pytest.approx(1 / 3)


def test_haar_finds_the_bundled_face(tmp_path, model_cache: str) -> None:
    cfg = extract_config(str(tmp_path), model_cache)
    frame = np.full((224, 398, 3), 90, np.uint8)
    frame[40:180, 200:340] = cv2.resize(face_image(), (140, 140))
    boxes = faces.build_detector(cfg.extract.faces).detect(np.stack([frame, np.full_like(frame, 90)]))
    x, y, w, h = faces.largest_box(boxes[0])
    assert 180 < x + w / 2 < 360 and 20 < y + h / 2 < 200  # on the face
    assert len(boxes[1]) == 0  # a blank frame has none


def test_yunet_needs_a_model_path(tmp_path, model_cache: str) -> None:
    cfg = extract_config(str(tmp_path), model_cache, "extract.faces.detector=yunet")
    with pytest.raises(FileNotFoundError, match="model_path"):
        faces.build_detector(cfg.extract.faces)


def _errors(out: dict, branch: str) -> list:
    return [json.loads(c) if c else None for c in out[f"error_{branch}"]]


def test_decode_batch_good_and_broken(clips: pd.DataFrame, tmp_path, model_cache: str) -> None:
    cfg = extract_config(str(tmp_path), model_cache)
    batch = {c: clips[c].to_numpy() for c in ("video_id", "video_path", "text")}
    out = decode_batch(batch, cfg)
    ids = list(out["video_id"])
    assert out["frames"].shape == (len(ids), 4, 224, 224, 3) and out["frames"].dtype == np.uint8
    assert out["faces"].shape == (len(ids), 4, 224, 224, 3)
    stage = {
        b: {v: (e or {}).get("stage") for v, e in zip(ids, _errors(out, b), strict=True)}
        for b in ("frame", "face", "audio")
    }
    for name in ("broken_empty", "broken_text", "broken_truncated"):
        assert stage["frame"][name] == stage["face"][name] == "decode_video"
        assert stage["audio"][name] == "decode_audio"
    assert stage["frame"][MISSING] == stage["audio"][MISSING] == "open"
    assert stage["audio"]["broken_noaudio"] == "decode_audio"
    assert stage["frame"]["broken_noaudio"] is None and stage["face"]["broken_noaudio"] is None
    good = [i for i, v in enumerate(ids) if v.startswith("sample_")]
    assert (out["frame_n"][good] == 4).all() and (out["face_n"][good] == 4).all()
    assert (out["face_ratio"][good] > 0.5).all()
    # About 2 s of float32 at 16 kHz (AAC pads a few frames).
    assert all(abs(len(out["audio"][i]) / 4 - 32000) < 2000 for i in good)
