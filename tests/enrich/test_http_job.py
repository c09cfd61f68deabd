"""The openai backend end to end: Ray Data actors against a real chat-completions server on loopback.

One first run is shared by the tests of this module (each run starts a Ray Data pipeline).
"""

from __future__ import annotations

import os

import pytest
from chat_server import API_KEY, KEY_ENV, ChatServer, http_config, write_run

from ecmf_ray.config import save_config, to_yaml
from ecmf_ray.enrich import read_enrichment
from ecmf_ray.enrich.job import run_enrich

TEXTS = {
    "v1": "VALID 今天终于放假了，太好了！",
    "v2": "FENCED 他走了以后我一直睡不着。",
    "v3": "MALFORMED 你再说一遍试试？",
    "v4": "OUTSIDE 我们赢了！",
    "v5": "RATE 明天的考试怎么办啊……",
    "v6": "BUSY 嗯，我知道了。",
    "v7": "SLOW 什么？你怎么在这里？",
    "v8": "",
    "v9": "VALID 今天终于放假了，太好了！",  # the same transcript as v1: asked once
}


@pytest.fixture(scope="module")
def first_run(ray_cluster, chat_server: ChatServer, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("enrich_run"))
    write_run(run_dir, TEXTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        cfg = http_config(run_dir, chat_server.base_url)
        save_config(cfg, "enrich")  # what `ecmf enrich` does first
        summary = run_enrich(cfg)
    return run_dir, summary, dict(chat_server.requests)


def test_answers_are_validated_and_bad_rows_recorded(first_run) -> None:
    run_dir, summary, _ = first_run
    table = read_enrichment(run_dir).set_index("video_id")
    assert list(table.index) == list(TEXTS)
    assert summary["videos"] == 9 and summary["requests"] == 8 and summary["sent"] == 7
    labels = table["label"].to_dict()
    assert labels == {
        "v1": "happy", "v2": "sad", "v3": None, "v4": None, "v5": "worried",
        "v6": "neutral", "v7": None, "v8": None, "v9": "happy",
    }  # fmt: skip
    assert table.loc["v1", "keywords"] == "开心, 笑" and table.loc["v1", "source"] == "llm"
    assert table.loc["v1", "origin"] == "openai:test-model"
    assert "not valid JSON" in table.loc["v3", "error"] and table.loc["v3", "raw"].startswith(
        '{"label": "angry"'
    )
    assert "'excited' is not one of" in table.loc["v4", "error"] and "excited" in table.loc["v4", "raw"]
    assert "timed out" in table.loc["v7", "error"] and table.loc["v7", "raw"] is None
    assert table.loc["v8", "error"] == "empty transcript; not sent"
    assert table.loc[["v1", "v2", "v5", "v6", "v9"], "error"].isna().all()


def test_retries_and_timeouts(first_run) -> None:
    _, _, requests = first_run
    # 429 then success, 503 then success; the slow row tried max_retries + 1 times, then given up.
    assert requests == {
        "VALID": 1,
        "FENCED": 1,
        "MALFORMED": 1,
        "OUTSIDE": 1,
        "RATE": 2,
        "BUSY": 2,
        "SLOW": 2,
    }


def test_rerun_asks_only_what_was_never_answered(first_run, chat_server: ChatServer, monkeypatch) -> None:
    run_dir, _, _ = first_run
    monkeypatch.setenv(KEY_ENV, API_KEY)
    cfg = http_config(run_dir, chat_server.base_url)
    before = sum(chat_server.requests.values())
    chat_server.slow = False
    # The timed-out row is asked again (a timeout is not an answer); invalid answers are not.
    summary = run_enrich(cfg)
    assert sum(chat_server.requests.values()) - before == 1 and summary["sent"] == 1
    assert read_enrichment(run_dir).set_index("video_id").loc["v7", "label"] == "surprise"

    summary = run_enrich(cfg)
    assert sum(chat_server.requests.values()) - before == 1
    assert summary["sent"] == 0 and summary["requests"] == 8


def test_a_changed_prompt_asks_again(first_run, chat_server: ChatServer, monkeypatch) -> None:
    run_dir, _, _ = first_run
    monkeypatch.setenv(KEY_ENV, API_KEY)
    cfg = http_config(run_dir, chat_server.base_url, "enrich.language=en", "enrich.max_retries=0")
    before = chat_server.requests["FENCED"]
    chat_server.slow = False
    run_enrich(cfg)
    assert chat_server.requests["FENCED"] == before + 1


def test_key_appears_nowhere_in_run_dir_config_or_output(
    first_run, chat_server: ChatServer, monkeypatch, capsys, caplog
) -> None:
    run_dir, _, _ = first_run
    monkeypatch.setenv(KEY_ENV, API_KEY)
    cfg = http_config(run_dir, chat_server.base_url)
    caplog.set_level("DEBUG")
    run_enrich(cfg)
    assert API_KEY not in to_yaml(cfg) + capsys.readouterr().out + caplog.text
    secret = API_KEY.encode()
    files = [os.path.join(root, name) for root, _, names in os.walk(run_dir) for name in names]
    assert any("/enrich/cache/" in f for f in files) and any(f.endswith("enrich.yaml") for f in files)
    for path in files:
        with open(path, "rb") as f:
            assert secret not in f.read(), path
