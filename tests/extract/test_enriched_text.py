"""The enriched text (issue 6) reaches the text features, laid out by the configured template; with the
paper's two LLM sources asked over HTTP (issue 20), both sources' fields reach it, also when answers
are cut at their token budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ecmf_ray import features
from ecmf_ray.enrich import build_enriched_text, enriched_texts, read_enrichment
from ecmf_ray.enrich.job import run_enrich
from ecmf_ray.enrich.table import enrichment_path, write_enrichment
from ecmf_ray.extract.encoders import RobertaEncoder, roberta_features
from ecmf_ray.extract.reference import run_sequential
from tests.enrich.chat_server import API_KEY, AV_LONG_ANSWER, KEY_ENV, ChatServer, http_overrides
from tests.extract.conftest import extract_config, make_run


def text_features(run_dir: str) -> dict[str, np.ndarray]:
    ids, matrix = features.load_branch(run_dir, "text")
    return dict(zip(ids, matrix, strict=True))


def encoded(cfg, text: str) -> np.ndarray:
    """What the text branch's RoBERTa makes of ``text``."""
    encoder = RobertaEncoder(cfg)
    with torch.inference_mode():
        out, _ = roberta_features(
            encoder.model, encoder.tokenizer, [text], encoder.layers, encoder.combine, encoder.max_length,
            encoder.device,
        )  # fmt: skip
    return out[0].numpy()


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

    rows = enrichment.set_index("video_id").to_dict("index")
    for video_id, text in zip(good_clips["video_id"], good_clips["text"], strict=True):
        # No enrich.sources: the one source "llm".
        values = {f"llm.{field}": value for field, value in rows[video_id].items()}
        expected_text = build_enriched_text(text, values, cfg.enrich)
        assert rows[video_id]["keywords"].split(",")[0] in expected_text
        assert rows[video_id]["description"] not in expected_text  # switched off
        expected = encoded(cfg, expected_text)
        np.testing.assert_allclose(enriched[video_id], expected, rtol=1e-4, atol=1e-5)
        assert not np.allclose(enriched[video_id], plain[video_id], atol=1e-4)


# The paper's two sources against the local chat server, which cuts an answer at the request's max_tokens
# (base.yaml: 256, then max_tokens_retry 1024): the text LLM's answer to TEXTLONG is cut at 256 and whole
# at 1024; the AV LLM's answer to AVLONG is cut at both.
CUT = "TEXTLONG AVLONG 你到底想怎么样？"
WHOLE = "VALID 今天终于放假了，太好了！"
SOURCES = (
    "enrich.sources=[{name: text_llm, fields: [label, keywords]},"
    " {name: av_llm, model: omni-test, media: [frames, audio], fields: [label, keywords, description],"
    " media_limits: {frames: 2, short_side: 64, audio_s: 1.0}}]"
)


@pytest.fixture(scope="module")
def two_llm_run(ray_cluster, good_clips, model_cache, tmp_path_factory):
    clips = good_clips.head(2).assign(text=[CUT, WHOLE])
    run_dir = make_run(str(tmp_path_factory.mktemp("two_llms")), clips)
    with ChatServer(API_KEY) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        cfg = extract_config(run_dir, model_cache, *http_overrides(server.base_url), SOURCES,
                             "enrich.enabled=true", "extract.branches=[text]")  # fmt: skip
        first = run_enrich(cfg)
        again = run_enrich(cfg)
        asked = {k: server.budgets[k] for k in server.requests}
    run_sequential(cfg)
    return cfg, clips, first, again, asked


def test_cut_answers_are_asked_again_with_a_larger_budget(two_llm_run) -> None:
    cfg, clips, first, again, asked = two_llm_run
    # Each cut answer asked once more, with max_tokens_retry; the rerun asks nothing (all cached).
    assert asked == {"TEXTLONG": [256, 1024], "av:AVLONG": [256, 1024], "VALID": [256], "av:VALID": [256]}
    assert (first["requests"], first["retried"], first["sent"]) == (4, 2, 6)
    assert (again["sent"], again["retried"]) == (0, 2)
    assert first["truncated_by_source"] == again["truncated_by_source"] == {"text_llm": 0, "av_llm": 1}

    table = read_enrichment(cfg.run_dir).set_index(["source", "video_id"])
    cut_id, whole_id = clips["video_id"]
    text = table.loc[("text_llm", cut_id)]  # whole on the second try
    assert (text["label"], text["keywords"], text["truncated"], text["raw"]) == (
        "angry",
        "生气, 吵架",
        False,
        None,
    )
    av = table.loc[("av_llm", cut_id)]  # still cut: the label and keywords it completed are kept
    assert (av["label"], av["keywords"], av["truncated"], av["error"]) == (
        "worried",
        "皱眉, 叹气",
        True,
        None,
    )
    assert not av["description"] and av["raw"] == AV_LONG_ANSWER[:1024]
    assert not table.loc[("av_llm", whole_id), "truncated"]


def test_both_sources_reach_the_text_roberta_encodes(two_llm_run) -> None:
    cfg, clips, _, _, _ = two_llm_run
    cut_id, whole_id = clips["video_id"]
    # The AV LLM's cut description drops its own piece only; its empty keywords too.
    expected = {
        cut_id: f"{CUT}[SEP]情绪:angry[SEP]情绪:worried[SEP]关键词:生气, 吵架[SEP]关键词:皱眉, 叹气",
        whole_id: f"{WHOLE}[SEP]情绪:happy[SEP]情绪:happy[SEP]关键词:开心, 笑[SEP]画面中的人在笑，声音轻快",
    }
    assert enriched_texts(cfg, clips).to_dict() == expected
    features_by_id = text_features(cfg.run_dir)
    for video_id, text in expected.items():
        np.testing.assert_allclose(features_by_id[video_id], encoded(cfg, text), rtol=1e-4, atol=1e-5)
