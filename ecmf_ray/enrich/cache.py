"""The answer cache under ``${run_dir}/enrich/cache/``: a rerun pays nothing for rows already answered.

Keyed by a hash of the whole request body (model, prompt messages with the transcript inside,
generation settings), so a changed prompt or model asks again. Stored as Parquet shards, one per
answered batch, written with single atomic writes: works on s3:// and survives a crash mid-run.
Only answers the server gave are cached; failed requests (timeouts, 5xx) are asked again next run.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

import pandas as pd

from ecmf_ray import storage
from ecmf_ray.enrich.table import enrich_dir


def cache_dir(run_dir: str) -> str:
    return storage.join(enrich_dir(run_dir), "cache")


def cache_key(payload: Mapping[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_cache(uri: str) -> dict[str, str]:
    """Every cached answer under ``uri``: key -> answer text."""
    answers: dict[str, str] = {}
    for name in storage.listdir(uri):
        if name.endswith(".parquet"):
            shard = storage.read_table(storage.join(uri, name)).to_pandas()
            answers.update(zip(shard["key"], shard["content"], strict=True))
    return answers


def write_shard(uri: str, answered: pd.DataFrame) -> None:
    """Cache the rows of ``answered`` (columns ``key``, ``content``) that have an answer."""
    rows = answered.loc[answered["content"].notna(), ["key", "content"]]
    if len(rows):
        storage.write_table(rows, storage.join(uri, f"part-{uuid.uuid4().hex}.parquet"))
