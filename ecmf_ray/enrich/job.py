"""The ``enrich`` job: ``${run_dir}/enrich/enrichment.parquet``, one row per (video, source).

Each source (:mod:`.sources`) is asked in turn through its backend; a source shown the clip has its
frames and audio decoded and attached in Ray Data tasks (:mod:`.media`) before the request actors. An
answer cut at ``enrich.max_tokens`` is asked once more with ``enrich.max_tokens_retry``; one still cut
keeps the fields it completed and is marked ``truncated``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich.answers import parse_answer
from ecmf_ray.enrich.cache import Cached, cache_dir, cache_key, load_cache, write_shard
from ecmf_ray.enrich.precomputed import import_precomputed
from ecmf_ray.enrich.prompts import chat_payload
from ecmf_ray.enrich.sources import FIELDS, Source, resolve_sources
from ecmf_ray.enrich.table import enrich_dir, enrichment_path, write_enrichment
from ecmf_ray.enrich.text import resolve_template
from ecmf_ray.freshness import manifest_digest, read_record, stale_reason, write_record
from ecmf_ray.stall import stall_guarded_batches

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("openai", "vllm", "precomputed")
# enrich: keys that change how fast answers come, not what they are (free to change between runs).
OPERATIONAL_KEYS = ("enabled", "batch_size", "workers", "concurrency", "timeout_s", "max_retries", "backoff_s",
                    "backoff_max_s", "stall_timeout_s")  # fmt: skip


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


def build_requests(source: Source, manifest: pd.DataFrame, max_tokens: int) -> pd.DataFrame:
    """One chat request per video, with answers of at most ``max_tokens``: ``video_id, video_path, key,
    payload`` (JSON text), ``error``.

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
        payload = chat_payload(source.cfg, text, media=bool(source.media), max_tokens=max_tokens)
        key_input = {**payload, **settings, "video": str(path)} if settings else payload
        rows.append((video_id, str(path), cache_key(key_input), json.dumps(payload, ensure_ascii=False)))
    requests = pd.DataFrame(rows, columns=["video_id", "video_path", "key", "payload"])
    return requests.assign(error=pd.Series([None] * len(requests), dtype=object))


def ask(source: Source, requests: pd.DataFrame, cache_uri: str) -> pd.DataFrame:
    """Send ``requests`` through the source's backend, caching each batch's answers as it arrives.

    Returns the replies: ``video_id, key, content, error, truncated`` (content None when there is no
    answer; truncated: it stopped at the request's ``max_tokens``).
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
    progress = lambda: (sum(map(len, replies)), len(requests))  # noqa: E731  (videos asked now)
    for batch in stall_guarded_batches(backend(cfg, dataset), "enrich", float(cfg.stall_timeout_s), progress):
        write_shard(cache_uri, batch)
        replies.append(batch)
    return pd.concat(replies, ignore_index=True)


def _record(video_id: str, answer: Cached | None, error: str | None, source: Source, origin: str) -> dict:
    base = {"video_id": video_id, "source": source.name, "origin": origin}
    if answer is None:
        return {**base, "error": error or "no answer"}
    parsed = parse_answer(answer.content, truncated=answer.truncated)
    base.update(truncated=answer.truncated)
    if parsed.error or parsed.truncated:  # the answer as given, to see what went wrong
        base.update(raw=answer.content)
    if parsed.error:
        return {**base, "error": parsed.error}
    return {**base, **{f: getattr(parsed, f) for f in source.fields}}


def ask_llm(cfg: DictConfig, source: Source, manifest: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """One source's enrichment records from an LLM backend, asking only what the cache does not hold.

    Each video is asked with ``max_tokens``; one whose answer was cut there is asked again with
    ``max_tokens_retry``, whose answer replaces the cut one (which stays if that request fails).
    """
    uri = cache_dir(cfg.run_dir)
    cached = load_cache(uri)
    answers: dict[str, tuple[Cached | None, str | None]] = {}  # video_id -> (answer, error)
    asked, sent, pending = [], 0, manifest
    for budget in (int(source.cfg.max_tokens), int(source.cfg.max_tokens_retry)):
        if pending.empty:
            break
        requests = build_requests(source, pending, budget)
        # Identical requests (the same transcript, for a text source) are asked once.
        todo = requests[~requests["key"].isin(cached.keys())].drop_duplicates("key")
        logger.info("enrich %s: %d requests (max_tokens %d), %d to send, the rest cached",
                    source.name, len(requests), budget, len(todo))  # fmt: skip
        errors: dict[str, str] = {}
        if len(todo):
            replies = ask(source, todo, uri)
            columns = replies[["key", "content", "error", "truncated"]]
            for key, content, error, truncated in columns.itertuples(index=False):
                if pd.isna(content):
                    errors[key] = error
                else:
                    cached[key] = Cached(content, bool(truncated))
        for video_id, key in zip(requests["video_id"], requests["key"], strict=True):
            if key in cached or video_id not in answers:
                answers[video_id] = (cached.get(key), errors.get(key))
        asked.append(len(requests))
        sent += len(todo)
        cut = [v for v in requests["video_id"] if answers[v][0] is not None and answers[v][0].truncated]
        pending = manifest[manifest["video_id"].isin(cut)]
    origin = f"{source.cfg.backend}:{source.cfg.model}"
    records = []
    for video_id in manifest["video_id"]:
        if video_id not in answers:
            base = {"video_id": video_id, "source": source.name, "origin": origin}
            records.append({**base, "error": "empty transcript; not sent"})
        else:
            records.append(_record(video_id, *answers[video_id], source, origin))
    stats = {"requests": asked[0] if asked else 0, "retried": sum(asked[1:]), "sent": sent}
    return pd.DataFrame(records), stats


def check_source(source: Source) -> None:
    """Refuse a source whose settings cannot work, before any source is asked."""
    c = source.cfg
    if c.backend not in BACKENDS:
        raise ValueError(
            f"enrich.backend of source '{source.name}' must be one of {', '.join(BACKENDS)}, not '{c.backend}'"
        )
    if c.backend == "precomputed":
        if not c.path:
            raise ValueError(
                f"source '{source.name}': enrich.path is not set (the precomputed JSONL or CSV file)"
            )
        return
    if c.backend == "openai" and not c.base_url:
        raise ValueError(
            f"source '{source.name}': enrich.base_url is not set; give the chat-completions endpoint, "
            "e.g. enrich.base_url=http://HOST:8000/v1 for a vLLM server"
        )
    if int(c.max_tokens_retry) <= int(c.max_tokens):
        raise ValueError(
            f"source '{source.name}': enrich.max_tokens_retry ({c.max_tokens_retry}) must be larger than "
            f"enrich.max_tokens ({c.max_tokens}): it is the budget for asking again an answer cut at max_tokens"
        )


def enrich_source(
    cfg: DictConfig, source: Source, manifest: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One source's records (one per manifest video) and request counts; ``source`` passed :func:`check_source`."""
    c = source.cfg
    if c.backend != "precomputed":
        return ask_llm(cfg, source, manifest)
    records = import_precomputed(str(c.path), manifest["video_id"].tolist(), source.name)
    for field in FIELDS:
        if field not in source.fields and field in records:
            records[field] = None  # not this source's to give
    return records, {}


def run_enrich(cfg: DictConfig) -> dict:
    """Enrich every manifest video from every configured source and write the enrichment table."""
    sources = resolve_sources(cfg.enrich)
    for source in sources:
        check_source(source)
    resolve_template(cfg.enrich, sources)  # a template the text branch cannot use fails now, not after paying
    manifest = read_manifest(manifest_path(cfg.run_dir))
    tables, stats = [], {"requests": 0, "retried": 0, "sent": 0}
    per_source, truncated = {}, {}
    for source in sources:
        records, counts = enrich_source(cfg, source, manifest)
        tables.append(records)
        for k, v in counts.items():
            stats[k] += v
        per_source[source.name] = int(records["error"].notna().sum()) if "error" in records else 0
        truncated[source.name] = int(records["truncated"].eq(True).sum()) if "truncated" in records else 0
    records = pd.concat(tables, ignore_index=True)
    out = enrichment_path(cfg.run_dir)
    write_enrichment(records, out)
    write_record(record_path(cfg.run_dir), enrich_settings(cfg))
    errors = sum(per_source.values())
    summary = {"videos": len(manifest), "rows": len(records), "errors": errors, "errors_by_source": per_source,
               "truncated_by_source": truncated, **stats, "output": out}  # fmt: skip
    detail = ", ".join(f"{name}: {n}" for name, n in per_source.items())
    cut = ", ".join(f"{name}: {n}" for name, n in truncated.items())
    print(f"enrichment: {len(manifest)} videos x {len(sources)} source(s), errors {detail}, "
          f"answers still cut at max_tokens_retry {cut} -> {out}")  # fmt: skip
    return summary
