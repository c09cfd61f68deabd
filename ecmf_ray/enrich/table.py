"""The enrichment table: its columns, where it lives under ``run_dir``, reading and writing it."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from ecmf_ray import storage

# One row per (video_id, source). source: the configured source's name; origin: its backend and model
# (or precomputed file); raw: the model's answer text, kept only when it failed validation or was cut;
# truncated: the answer stopped at its token budget even when asked again with enrich.max_tokens_retry,
# so the fields are those it completed (null: no answer, or a precomputed row).
SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("keywords", pa.string()),
        ("description", pa.string()),
        ("origin", pa.string()),
        ("error", pa.string()),
        ("raw", pa.string()),
        ("truncated", pa.bool_()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


def enrich_dir(run_dir: str) -> str:
    return storage.join(run_dir, "enrich")


def enrichment_path(run_dir: str) -> str:
    return storage.join(run_dir, "enrich", "enrichment.parquet")


def write_enrichment(records: pd.DataFrame, uri: str) -> None:
    frame = records.reindex(columns=list(COLUMNS)).astype(object)
    frame = frame.where(frame.notna(), None)
    storage.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False), uri)


def read_enrichment(run_dir: str) -> pd.DataFrame:
    """The table ``ecmf enrich`` wrote, nulls as None; a clear error when it is missing."""
    uri = enrichment_path(run_dir)
    if not storage.exists(uri):
        raise FileNotFoundError(f"enrichment not found: {uri} (run `ecmf enrich` first)")
    df = storage.read_table(uri).to_pandas()
    return df.astype(object).where(df.notna(), None)
