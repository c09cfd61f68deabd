"""The enriched text (issue 6) reaches the text features, laid out by the configured template."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import extract_config, make_run

from ecmf_ray import features
from ecmf_ray.enrich import build_enriched_text
from ecmf_ray.enrich.table import enrichment_path, write_enrichment
from ecmf_ray.extract.encoders import RobertaEncoder, roberta_features
from ecmf_ray.extract.reference import run_sequential


def text_features(run_dir: str) -> dict[str, np.ndarray]:
    ids, matrix = features.load_branch(run_dir, "text")
    return dict(zip(ids, matrix, strict=True))


@pytest.fixture(scope="module")
def good_clips(clips: pd.DataFrame) -> pd.DataFrame:
    return clips[clips["video_id"].str.startswith("sample_")].head(3).reset_index(drop=True)


def test_enriched_text_reaches_the_text_features(good_clips, model_cache, tmp_path_factory):
    plain_dir = make_run(str(tmp_path_factory.mktemp("plain")), good_clips)
    run_sequential(extract_config(plain_dir, model_cache, "extract.branches=[text]"))

    enriched_dir = make_run(str(tmp_path_factory.mktemp("enriched")), good_clips)
    enrichment = pd.DataFrame(
        {
            "video_id": good_clips["video_id"],
            "label": ["happy", "sad", None],
            "keywords": ["开心,高兴", "难过", "惊讶"],
            "description": ["说话人笑着", "语气低沉", "声音突然变高"],
            "source": "precomputed:test",
        }
    )
    write_enrichment(enrichment, enrichment_path(enriched_dir))
    cfg = extract_config(
        enriched_dir,
        model_cache,
        "extract.branches=[text]",
        "enrich.enabled=true",
        "enrich.use_description=false",
    )
    run_sequential(cfg)

    plain, enriched = text_features(plain_dir), text_features(enriched_dir)
    assert set(plain) == set(enriched) == set(good_clips["video_id"])

    encoder = RobertaEncoder(cfg)
    rows = enrichment.set_index("video_id").to_dict("index")
    for video_id, text in zip(good_clips["video_id"], good_clips["text"], strict=True):
        expected_text = build_enriched_text(text, rows[video_id], cfg.enrich)
        assert rows[video_id]["keywords"].split(",")[0] in expected_text
        assert rows[video_id]["description"] not in expected_text  # switched off
        with torch.inference_mode():
            expected, _ = roberta_features(
                encoder.model, encoder.tokenizer, [expected_text], encoder.layers, encoder.combine,
                encoder.max_length, encoder.device,
            )  # fmt: skip
        np.testing.assert_allclose(enriched[video_id], expected[0].numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(enriched[video_id], plain[video_id], atol=1e-4)
