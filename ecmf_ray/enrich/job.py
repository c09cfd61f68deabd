"""The ``enrich`` job: ``${run_dir}/enrich/enrichment.parquet`` from the configured backend."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich.answers import parse_answer
from ecmf_ray.enrich.cache import cache_dir, cache_key, load_cache, write_shard
from ecmf_ray.enrich.precomputed import import_precomputed
from ecmf_ray.enrich.prompts import chat_payload
from ecmf_ray.enrich.table import enrich_dir, enrichment_path, write_enrichment
from ecmf_ray.freshness import manifest_digest, read_record, stale_reason, write_record

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("openai", "vllm", "precomputed")
# enrich: keys that change how fast answers come, not what they are (free to change between runs).
OPERATIONAL_KEYS = ("enabled", "batch_size", "workers", "concurrency", "timeout_s", "max_retries", "backoff_s",
                    "backoff_max_s")  # fmt: skip


def record_path(run_dir: str) -> str:
    return storage.join(enrich_dir(run_dir), "settings.json")


def enrich_settings(cfg: DictConfig) -> dict:
    """What the enrichment was made from: the enrich settings (sources, prompts, models) and the manifest."""
    settings = OmegaConf.to_container(cfg.enrich, resolve=True)
    return {
        "enrich": {k: v for k, v in settings.items() if k not in OPERATIONAL_KEYS},
        "manifest": manifest_digest(cfg.run_dir),
    }


def current(cfg: DictConfig) -> str | None:
    """None when enrichment.parquet exists and was made with the current settings for this manifest."""
    if not storage.exists(enrichment_path(cfg.run_dir)):
        return "no enrich/enrichment.parquet yet"
    return stale_reason(
        "enrich/enrichment.parquet", read_record(record_path(cfg.run_dir)), enrich_settings(cfg)
    )


def build_requests(cfg_enrich: Any, manifest: pd.DataFrame) -> pd.DataFrame:
    """One chat request per video with a transcript: ``video_id, key, payload`` (JSON text)."""
    rows = []
    for video_id, text in manifest[["video_id", "text"]].itertuples(index=False):
        if text and str(text).strip():
            payload = chat_payload(cfg_enrich, str(text).strip())
            rows.append((video_id, cache_key(payload), json.dumps(payload, ensure_ascii=False)))
    return pd.DataFrame(rows, columns=["video_id", "key", "payload"])


def ask(cfg_enrich: Any, requests: pd.DataFrame, cache_uri: str) -> pd.DataFrame:
    """Send ``requests`` through the backend, caching each batch's answers as it arrives.

    Returns the replies: ``video_id, key, content, error`` (content None when there is no answer).
    """
    import ray.data

    if cfg_enrich.backend == "vllm":
        from ecmf_ray.enrich.vllm_engine import ask_engine as backend
    else:
        from ecmf_ray.enrich.openai_http import ask_endpoint as backend
    size = int(cfg_enrich.batch_size)
    # One block per batch: batches spread over the pool and stream back (and into the cache) one by one.
    blocks = [requests.iloc[i : i + size] for i in range(0, len(requests), size)]
    replies = []
    for batch in backend(cfg_enrich, ray.data.from_pandas(blocks)).iter_batches(
        batch_size=None, batch_format="pandas"
    ):
        write_shard(cache_uri, batch)
        replies.append(batch)
    return pd.concat(replies, ignore_index=True)


def _record(video_id: str, content: str | None, error: str | None, source: str) -> dict:
    if content is None:
        return {"video_id": video_id, "source": source, "error": error or "no answer"}
    answer = parse_answer(content)
    record = {"video_id": video_id, "source": source, **asdict(answer)}
    if answer.error:
        record["raw"] = content
    return record


def ask_llm(cfg: DictConfig, manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Enrichment records from an LLM backend, asking only what the cache does not hold."""
    e = cfg.enrich
    uri = cache_dir(cfg.run_dir)
    requests = build_requests(e, manifest)
    answers = load_cache(uri)
    # Identical transcripts make identical requests: ask once.
    todo = requests[~requests["key"].isin(answers.keys())].drop_duplicates("key")
    logger.info("enrich: %d requests, %d to send, the rest cached", len(requests), len(todo))
    errors: dict[str, str] = {}
    if len(todo):
        replies = ask(e, todo, uri)
        answered = replies["content"].notna()
        answers.update(zip(replies.loc[answered, "key"], replies.loc[answered, "content"], strict=True))
        errors.update(zip(replies.loc[~answered, "key"], replies.loc[~answered, "error"], strict=True))
    keys = dict(zip(requests["video_id"], requests["key"], strict=True))
    source = f"{e.backend}:{e.model}"
    records = []
    for video_id in manifest["video_id"]:
        key = keys.get(video_id)
        if key is None:
            records.append({"video_id": video_id, "source": source, "error": "empty transcript; not sent"})
        else:
            records.append(_record(video_id, answers.get(key), errors.get(key), source))
    stats = {"requests": len(requests), "sent": len(todo)}
    return pd.DataFrame(records), stats


def run_enrich(cfg: DictConfig) -> dict:
    """Enrich every manifest video with the configured backend and write the enrichment table."""
    e = cfg.enrich
    if e.backend not in BACKENDS:
        raise ValueError(f"enrich.backend must be one of {', '.join(BACKENDS)}, not '{e.backend}'")
    manifest = read_manifest(manifest_path(cfg.run_dir))
    if e.backend == "precomputed":
        if not e.path:
            raise ValueError("enrich.path is not set (the precomputed JSONL or CSV file)")
        records, stats = import_precomputed(str(e.path), manifest["video_id"].tolist()), {}
    else:
        records, stats = ask_llm(cfg, manifest)
    out = enrichment_path(cfg.run_dir)
    write_enrichment(records, out)
    write_record(record_path(cfg.run_dir), enrich_settings(cfg))
    errors = int(records["error"].notna().sum()) if "error" in records else 0
    summary = {"videos": len(records), "errors": errors, **stats, "output": out}
    print(f"enrichment: {len(records)} videos, {errors} with errors -> {out}")
    return summary
