"""The encoders on hand-made batches (no Ray): padding invariance, windows, empty inputs, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import extract_config

from ecmf_ray.extract.encoders import ClipEncoder, HubertEncoder, RobertaEncoder


def _batch(n: int, branch: str, **columns: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "video_id": np.array([f"v{i}" for i in range(n)], dtype=object),
        f"error_{branch}": np.full(n, "", dtype=object),
        **columns,
    }


def test_roberta_empty_text_is_an_error_and_padding_changes_nothing(tmp_path, model_cache: str) -> None:
    encoder = RobertaEncoder(extract_config(str(tmp_path), model_cache))
    texts = np.array(["", "你好", "今天真的很开心，我们去吃饭吧。"], dtype=object)
    out = encoder(_batch(3, "text", text=texts))
    assert "text" not in out  # consumed
    assert json.loads(out["error_text"][0])["error_type"] == "EmptyText"
    assert np.isnan(out["text_feature"][0]).all() and np.isfinite(out["text_feature"][1:]).all()
    assert out["text_n"].tolist() == [0, 2, 15]  # real tokens: no [CLS], [SEP] or padding
    alone = encoder(_batch(1, "text", text=texts[1:2]))
    np.testing.assert_allclose(alone["text_feature"][0], out["text_feature"][1], rtol=1e-5, atol=1e-5)


def test_hubert_windows_and_short_audio(tmp_path, model_cache: str) -> None:
    cfg = extract_config(
        str(tmp_path), model_cache, "extract.audio.window_s=1.0", "extract.hubert.combine=concat"
    )
    encoder = HubertEncoder(cfg)
    rng = np.random.default_rng(0)
    audio = [
        rng.normal(0, 0.1, 40_000).astype(np.float32),
        np.zeros(100, np.float32),
        rng.normal(0, 0.1, 16_000).astype(np.float32),
    ]
    out = encoder(_batch(3, "audio", audio=np.array([a.tobytes() for a in audio], dtype=object)))
    assert out["audio_feature"].shape == (3, 3 * 64)  # three layers, concatenated
    assert out["audio_n"].tolist() == [3, 0, 1]  # 2.5 s in 1 s windows
    assert json.loads(out["error_audio"][1])["error_type"] == "AudioTooShort"
    alone = encoder(_batch(1, "audio", audio=np.array([audio[2].tobytes()], dtype=object)))
    np.testing.assert_allclose(alone["audio_feature"][0], out["audio_feature"][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("output", "dim"), [("image_embeds", 48), ("pooler", 64)])
def test_clip_outputs_and_failed_rows(tmp_path, model_cache: str, output: str, dim: int) -> None:
    cfg = extract_config(
        str(tmp_path), model_cache, f"extract.clip.output={output}", "extract.clip.pooling=max"
    )
    encoder = ClipEncoder(cfg)
    crops = np.random.default_rng(0).integers(0, 255, (2, 4, 224, 224, 3), dtype=np.uint8)
    batch = _batch(2, "frame", frames=crops, frame_n=np.array([4, 2], np.int32))
    batch |= {
        "faces": crops.copy(),
        "face_n": np.array([3, 0], np.int32),
        "error_face": np.array(["", '{"stage": "faces"}'], dtype=object),
    }
    out = encoder(batch)
    assert "frames" not in out and "faces" not in out
    assert out["frame_feature"].shape == (2, dim) and np.isfinite(out["frame_feature"]).all()
    assert np.isfinite(out["face_feature"][0]).all() and np.isnan(out["face_feature"][1]).all()
    assert out["error_face"][1] == '{"stage": "faces"}'  # an earlier failure is kept, not overwritten
