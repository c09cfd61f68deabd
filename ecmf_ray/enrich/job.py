"""The ``enrich`` job: ``${run_dir}/enrich/enrichment.parquet``, one row per (video, source).

Each source (:mod:`.sources`) is asked in turn through its backend; a source shown the clip has its
frames and audio decoded and attached in Ray Data tasks (:mod:`.media`) before the request actors.
"""

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
from ecmf_ray.enrich.sources import FIELDS, Source, resolve_sources
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


def media_settings(source: Source) -> dict[str, Any]:
    """What shapes the media a source sends: part of its cache keys, so changed limits ask again."""
    if not source.media:
        return {}
    return {
        "media": list(source.media),
        "limits": OmegaConf.to_container(source.cfg.media_limits, resolve=True),
    }


def build_requests(source: Source, manifest: pd.DataFrame) -> pd.DataFrame:
    """One chat request per video: ``video_id, video_path, key, payload`` (JSON text), ``error``.

    A text source asks only about videos with a transcript; a source shown the clip asks about every
    video. Media parts are not in the payload yet (they are decoded later, in Ray tasks), so the key
    hashes the payload with the media settings and the video path instead of the media bytes.
    """
    rows = []
    settings = media_settings(source)
    for video_id, path, text in manifest[["video_id", "video_path", "text"]].itertuples(index=False):
        text = str(text).strip() if text else ""
        if not (text or source.media):
            continue
        payload = chat_payload(source.cfg, text, media=bool(source.media))
        key_input = {**payload, **settings, "video": str(path)} if settings else payload
        rows.append((video_id, str(path), cache_key(key_input), json.dumps(payload, ensure_ascii=False)))
    requests = pd.DataFrame(rows, columns=["video_id", "video_path", "key", "payload"])
    return requests.assign(error=pd.Series([None] * len(requests), dtype=object))


def ask(source: Source, requests: pd.DataFrame, cache_uri: str) -> pd.DataFrame:
    """Send ``requests`` through the source's backend, caching each batch's answers as it arrives.

    Returns the replies: ``video_id, key, content, error`` (content None when there is no answer).
    """
    import ray.data

    cfg = source.cfg
    if cfg.backend == "vllm":
        from ecmf_ray.enrich.vllm_engine import ask_engine as backend
    else:
        from ecmf_ray.enrich.openai_http import ask_endpoint as backend
    size = int(cfg.batch_size)
    # One block per batch: batches spread over the pool and stream back (and into the cache) one by one.
    blocks = [requests.iloc[i : i + size] for i in range(0, len(requests), size)]
    dataset = ray.data.from_pandas(blocks)
    if source.media:
        from ecmf_ray.enrich.media import TASK_NUM_CPUS, attach_media

        limits = OmegaConf.to_container(cfg.media_limits, resolve=True)
        dataset = dataset.map_batches(
            attach_media,
            fn_kwargs={"media": list(source.media), "limits": limits},
            batch_size=None,
            batch_format="pandas",
            num_cpus=TASK_NUM_CPUS,
        )
    replies = []
    for batch in backend(cfg, dataset).iter_batches(batch_size=None, batch_format="pandas"):
        write_shard(cache_uri, batch)
        replies.append(batch)
    return pd.concat(replies, ignore_index=True)


def _record(video_id: str, content: str | None, error: str | None, source: Source, origin: str) -> dict:
    base = {"video_id": video_id, "source": source.name, "origin": origin}
    if content is None:
        return {**base, "error": error or "no answer"}
    answer = asdict(parse_answer(content))
    if answer["error"]:
        return {**base, "error": answer["error"], "raw": content}
    return {**base, **{f: answer[f] for f in source.fields}}


def ask_llm(cfg: DictConfig, source: Source, manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """One source's enrichment records from an LLM backend, asking only what the cache does not hold."""
    uri = cache_dir(cfg.run_dir)
    requests = build_requests(source, manifest)
    answers = load_cache(uri)
    # Identical requests (the same transcript, for a text source) are asked once.
    todo = requests[~requests["key"].isin(answers.keys())].drop_duplicates("key")
    logger.info("enrich %s: %d requests, %d to send, the rest cached", source.name, len(requests), len(todo))
    errors: dict[str, str] = {}
    if len(todo):
        replies = ask(source, todo, uri)
        answered = replies["content"].notna()
        answers.update(zip(replies.loc[answered, "key"], replies.loc[answered, "content"], strict=True))
        errors.update(zip(replies.loc[~answered, "key"], replies.loc[~answered, "error"], strict=True))
    keys = dict(zip(requests["video_id"], requests["key"], strict=True))
    origin = f"{source.cfg.backend}:{source.cfg.model}"
    records = []
    for video_id in manifest["video_id"]:
        key = keys.get(video_id)
        if key is None:
            base = {"video_id": video_id, "source": source.name, "origin": origin}
            records.append({**base, "error": "empty transcript; not sent"})
        else:
            records.append(_record(video_id, answers.get(key), errors.get(key), source, origin))
    stats = {"requests": len(requests), "sent": len(todo)}
    return pd.DataFrame(records), stats


def enrich_source(
    cfg: DictConfig, source: Source, manifest: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One source's records (one per manifest video) and request counts."""
    c = source.cfg
    if c.backend not in BACKENDS:
        raise ValueError(
            f"enrich.backend of source '{source.name}' must be one of {', '.join(BACKENDS)}, not '{c.backend}'"
        )
    if c.backend != "precomputed":
        return ask_llm(cfg, source, manifest)
    if not c.path:
        raise ValueError(
            f"source '{source.name}': enrich.path is not set (the precomputed JSONL or CSV file)"
        )
    records = import_precomputed(str(c.path), manifest["video_id"].tolist(), source.name)
    for field in FIELDS:
        if field not in source.fields and field in records:
            records[field] = None  # not this source's to give
    return records, {}


def run_enrich(cfg: DictConfig) -> dict:
    """Enrich every manifest video from every configured source and write the enrichment table."""
    sources = resolve_sources(cfg.enrich)
    manifest = read_manifest(manifest_path(cfg.run_dir))
    tables, stats = [], {"requests": 0, "sent": 0}
    per_source = {}
    for source in sources:
        records, counts = enrich_source(cfg, source, manifest)
        tables.append(records)
        for k, v in counts.items():
            stats[k] += v
        per_source[source.name] = int(records["error"].notna().sum()) if "error" in records else 0
    records = pd.concat(tables, ignore_index=True)
    out = enrichment_path(cfg.run_dir)
    write_enrichment(records, out)
    write_record(record_path(cfg.run_dir), enrich_settings(cfg))
    errors = sum(per_source.values())
    summary = {"videos": len(manifest), "rows": len(records), "errors": errors, "errors_by_source": per_source,
               **stats, "output": out}  # fmt: skip
    detail = ", ".join(f"{name}: {n}" for name, n in per_source.items())
    print(f"enrichment: {len(manifest)} videos x {len(sources)} source(s), errors {detail} -> {out}")
    return summary
