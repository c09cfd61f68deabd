"""The openai backend with an s3:// run_dir: the table and the cache live in the bucket."""

from __future__ import annotations

from chat_server import API_KEY, KEY_ENV, ChatServer, http_config, write_run

from ecmf_ray import storage
from ecmf_ray.enrich import llm_labels
from ecmf_ray.enrich.cache import cache_dir
from ecmf_ray.enrich.job import run_enrich


def test_s3_run_dir_caches_in_the_bucket(ray_cluster, chat_server: ChatServer, s3_run_dir: str, monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    write_run(s3_run_dir, {"a": "VALID 太好了", "b": "FENCED 唉"})
    cfg = http_config(s3_run_dir, chat_server.base_url, "enrich.language=en")

    first = run_enrich(cfg)
    assert first["sent"] == 2 and first["output"].startswith("s3://enrich-test/run/enrich/")
    assert storage.listdir(cache_dir(s3_run_dir))
    assert llm_labels(s3_run_dir)["llm"].to_dict() == {"a": "happy", "b": "sad"}

    before = sum(chat_server.requests.values())
    assert run_enrich(cfg)["sent"] == 0
    assert sum(chat_server.requests.values()) == before
