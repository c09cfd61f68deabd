"""Two named sources end to end: a text LLM and an audio-visual LLM (the paper's GPT-4 and Qwen-Omni)
against a chat server on loopback that checks the media parts as vLLM's Qwen2.5-Omni server needs them.

One first run is shared by the tests of this module (each run starts Ray Data pipelines).
"""

from __future__ import annotations

import os

import pytest
from chat_server import API_KEY, KEY_ENV, ChatServer, check_parts, http_config, write_run

from ecmf_ray.data.synth import synthesize, write_broken_videos
from ecmf_ray.enrich import llm_labels, read_enrichment
from ecmf_ray.enrich.job import run_enrich
from ecmf_ray.enrich.media import SAMPLE_RATE, media_parts
from ecmf_ray.extract.decode import read_audio

CLIP_S = 3.0
TEXTS = {
    "ok": "VALID 今天终于放假了，太好了！",
    "silent": "VALID 你看，我们赢了！",  # a clip with no audio stream: frames and text only
    "broken": "VALID 他走了。",  # not a video: an error for the AV source only
    "limited": "AVLIMIT 明天的考试怎么办啊……",  # the AV source gets a 429 first, then an answer
    "down": "AVDOWN 嗯，我知道了。",  # the AV source gets 429 until it gives up
    "badjson": "AVBADJSON 什么？你怎么在这里？",  # the AV source answers malformed JSON
    "mute": "",  # no transcript: the text source does not ask, the AV source does
}
SOURCES = (
    "enrich.sources=[{name: text_llm, fields: [label, keywords]},"
    " {name: av_llm, model: omni-test, media: [frames, audio], fields: [label, description], batch_size: 2,"
    " media_limits: {frames: 3, short_side: 64, audio_s: 2.0}}]"
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("av_clips")
    synthesize(str(root), 1, duration_s=CLIP_S, seed=3)
    good = str(root / "video" / "sample_00001.mp4")
    broken = write_broken_videos(str(root / "broken"))
    paths = {v: good for v in TEXTS}
    paths["silent"] = str(root / "broken" / "broken_noaudio.mp4")
    paths["broken"] = str(root / "broken" / "broken_text.mp4")
    assert broken["broken_text"] == "not_video"
    return paths


@pytest.fixture(scope="module")
def first_run(ray_cluster, chat_server: ChatServer, clips, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("av_run"))
    write_run(run_dir, TEXTS, clips)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        summary = run_enrich(http_config(run_dir, chat_server.base_url, SOURCES))
    return run_dir, summary, dict(chat_server.requests)


def test_one_row_per_video_and_source(first_run) -> None:
    run_dir, summary, _ = first_run
    table = read_enrichment(run_dir)
    assert len(table) == 2 * len(TEXTS) and summary["rows"] == 14
    assert sorted(zip(table["video_id"], table["source"], strict=True)) == sorted(
        (v, s) for v in TEXTS for s in ("text_llm", "av_llm")
    )
    text = table[table["source"] == "text_llm"].set_index("video_id")
    av = table[table["source"] == "av_llm"].set_index("video_id")
    # The text source answers every clip with a transcript, whatever happened to the AV source.
    assert text.loc[text.index != "mute", "label"].eq("happy").all()
    assert text.loc["mute", "error"] == "empty transcript; not sent"
    assert (
        text["description"].isna().all() and text.loc["ok", "keywords"] == "开心, 笑"
    )  # fields: label, keywords
    assert (text["origin"] == "openai:test-model").all() and (av["origin"] == "openai:omni-test").all()

    # The AV source: answered, or one error per row that failed, and nothing else lost.
    answered = ["ok", "silent", "limited", "mute"]
    assert av.loc[answered, "label"].eq("happy").all() and av.loc[answered, "error"].isna().all()
    assert av.loc["ok", "description"] == "画面中的人在笑，声音轻快" and av["keywords"].isna().all()
    assert av.loc["broken", "error"].startswith("media: ")
    assert "HTTP 429" in av.loc["down", "error"] and "after 2 attempts" in av.loc["down", "error"]
    assert "not valid JSON" in av.loc["badjson", "error"] and av.loc["badjson", "raw"].startswith('{"label"')
    assert summary["errors_by_source"] == {"text_llm": 1, "av_llm": 3}
    assert llm_labels(run_dir).loc["limited"].to_dict() == {"av_llm": "happy", "text_llm": "happy"}


def test_media_parts_are_what_the_server_needs(first_run, chat_server: ChatServer) -> None:
    _, _, requests = first_run
    assert requests["av:AVLIMIT"] == 2 and requests["av:AVDOWN"] == 2 and requests["av:AVBADJSON"] == 1
    assert requests["AVLIMIT"] == requests["AVDOWN"] == 1  # the text source's requests: answered at once
    assert len(chat_server.media["VALID"]) == 3  # ok, silent, mute (the broken clip was never sent)
    for seen in chat_server.media["VALID"]:
        assert len(seen["images"]) == 3 and all(min(shape) == 64 for shape in seen["images"])
    audio = sorted(s["audio_s"] for s in chat_server.media["VALID"] if s["audio_s"] is not None)
    assert audio == [2.0, 2.0]  # 3 s clips, bounded by media_limits.audio_s
    assert sum(s["audio_s"] is None for s in chat_server.media["VALID"]) == 1  # the clip with no audio


def test_audio_part_holds_the_whole_clip_when_it_is_short(clips) -> None:
    parts = media_parts(clips["ok"], ["frames", "audio"], {"frames": 2, "short_side": 48, "jpeg_quality": 80,
                                                            "audio_s": 30.0, "decode_threads": 1})  # fmt: skip
    assert [p["type"] for p in parts] == ["image_url", "image_url", "input_audio"]
    seen = check_parts(parts)
    assert seen["audio_s"] == len(read_audio(clips["ok"], SAMPLE_RATE)) / SAMPLE_RATE
    assert abs(seen["audio_s"] - CLIP_S) < 0.1


def test_rerun_uses_the_cache_and_changed_media_settings_ask_again(
    first_run, chat_server: ChatServer, monkeypatch
) -> None:
    run_dir, _, _ = first_run
    monkeypatch.setenv(KEY_ENV, API_KEY)
    before = chat_server.requests.copy()
    again = run_enrich(http_config(run_dir, chat_server.base_url, SOURCES))
    sent = chat_server.requests - before
    # Only the rows never answered are asked again: the AV source's 429 row (the broken clip fails to decode).
    assert sent == {"av:AVDOWN": 2} and again["errors_by_source"] == {"text_llm": 1, "av_llm": 3}

    before = chat_server.requests.copy()
    fewer_frames = SOURCES.replace("frames: 3,", "frames: 2,")
    run_enrich(http_config(run_dir, chat_server.base_url, fewer_frames))
    sent = chat_server.requests - before
    assert sent["av:VALID"] == 3 and not any(k for k in sent if not k.startswith("av:"))
    assert all(len(s["images"]) == 2 for s in chat_server.media["VALID"][-3:])


def test_config_errors_name_the_source(tmp_path) -> None:
    from ecmf_ray.config import load_config
    from ecmf_ray.enrich.sources import resolve_sources

    def sources(value: str):
        return resolve_sources(load_config([], [f"enrich.sources={value}"]).enrich)

    with pytest.raises(ValueError, match=r"sources\[1\] \(b\): media \['video'\]"):
        sources("[{name: a}, {name: b, media: [video]}]")
    with pytest.raises(ValueError, match="used twice"):
        sources("[{name: a}, {name: a}]")
    with pytest.raises(ValueError, match="unknown key.*colour"):
        sources("[{name: a, colour: red}]")
    with pytest.raises(ValueError, match="in-job vllm backend sends text only"):
        sources("[{name: a, backend: vllm, media: [frames]}]")
    (default,) = resolve_sources(load_config([], []).enrich)
    assert (
        default.name == "llm"
        and default.media == ()
        and default.fields == ("label", "keywords", "description")
    )
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("profile", ["workstation", "cluster"])
def test_profiles_carry_the_papers_two_sources_ready_for_one_endpoint(profile: str) -> None:
    from ecmf_ray.config import load_config
    from ecmf_ray.enrich.job import check_source
    from ecmf_ray.enrich.sources import resolve_sources
    from ecmf_ray.enrich.text import resolve_template

    required = ["run_dir=s3://b/run", "dataset.root=s3://b/mer2025"] if profile == "cluster" else []
    off = load_config([profile], required)
    assert not off.enrich.enabled
    text_llm, av_llm = resolve_sources(off.enrich)
    assert (text_llm.name, text_llm.media, text_llm.fields) == ("text_llm", (), ("label", "keywords"))
    assert (av_llm.name, av_llm.media, av_llm.fields) == (
        "av_llm",
        ("frames", "audio"),
        ("label", "keywords", "description"),
    )
    check_source(text_llm)
    with pytest.raises(ValueError, match="source 'av_llm': enrich.base_url is not set"):
        check_source(av_llm)

    on = load_config([profile], [*required, "enrich.enabled=true", "enrich.base_url=http://llm-head:8000/v1"])
    sources = resolve_sources(on.enrich)
    for source in sources:
        check_source(source)
    assert [s.cfg.base_url for s in sources] == ["https://api.openai.com/v1", "http://llm-head:8000/v1"]
    assert [s.cfg.api_key_env for s in sources] == ["OPENAI_API_KEY", None]
    template = resolve_template(on.enrich, sources)
    for name in (
        "text_llm.label",
        "text_llm.keywords",
        "av_llm.label",
        "av_llm.keywords",
        "av_llm.description",
    ):
        assert f"{{{name}}}" in template


def test_a_retry_budget_no_larger_than_max_tokens_is_refused() -> None:
    from ecmf_ray.config import load_config
    from ecmf_ray.enrich.job import check_source
    from ecmf_ray.enrich.sources import resolve_sources

    (source,) = resolve_sources(
        load_config([], ["enrich.max_tokens=512", "enrich.max_tokens_retry=512"]).enrich
    )
    with pytest.raises(
        ValueError, match=r"max_tokens_retry \(512\) must be larger than enrich.max_tokens \(512\)"
    ):
        check_source(source)
