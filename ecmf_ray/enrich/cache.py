"""The answer cache under ``${run_dir}/enrich/cache/``: a rerun pays nothing for rows already answered.

Keyed by a hash of the whole request body (model, prompt messages with the transcript inside,
generation settings), so a changed prompt or model asks again. Stored as Parquet shards, one per
answered batch, written with single atomic writes: works on s3:// and survives a crash mid-run.
Only answers the server gave are cached; failed requests (timeouts, 5xx) are asked again next run. An
answer cut at its token budget is cached as such (``truncated``); the request asked again with a larger
budget is another request, with its own key.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ecmf_ray import storage
from ecmf_ray.enrich.table import enrich_dir


def cache_dir(run_dir: str) -> str:
    return storage.join(enrich_dir(run_dir), "cache")


def cache_key(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Cached:
    """One answer the server gave; ``truncated``: it stopped at the request's token budget."""

    content: str
    truncated: bool


def load_cache(uri: str) -> dict[str, Cached]:
    """Every cached answer under ``uri`` by key (shards from before ``truncated`` existed: not cut)."""
    answers: dict[str, Cached] = {}
    for name in storage.listdir(uri):
        if name.endswith(".parquet"):
            shard = storage.read_table(storage.join(uri, name)).to_pandas()
            cut = shard["truncated"] if "truncated" in shard else [False] * len(shard)
            for key, content, truncated in zip(shard["key"], shard["content"], cut, strict=True):
                answers[key] = Cached(content, bool(truncated))
    return answers


def write_shard(uri: str, answered: pd.DataFrame) -> None:
    """Cache the rows of ``answered`` (columns ``key``, ``content``, ``truncated``) that have an answer."""
    rows = answered.loc[answered["content"].notna(), ["key", "content", "truncated"]]
    if len(rows):
        storage.write_table(
            rows.astype({"truncated": bool}), storage.join(uri, f"part-{uuid.uuid4().hex}.parquet")
        )
