"""The ``precomputed`` backend: import results made elsewhere (e.g. GPT-4 or Qwen-Omni runs done
offline), as JSONL or CSV with columns ``name, label, keywords, description``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import pandas as pd

from ecmf_ray import storage
from ecmf_ray.enrich.answers import check_label, join_keywords

FIELDS: tuple[str, ...] = ("name", "label", "keywords", "description")


def _json_lines(text: str, uri: str) -> list[dict]:
    # Values stay as parsed: keywords may be a JSON list, and names like "0001" stay strings.
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{uri}, line {number}: not JSON ({err})") from None
    return rows


def read_precomputed(uri: str) -> pd.DataFrame:
    """The file as a frame with the four columns (``keywords`` and ``description`` may be absent)."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"enrich.path not found: {uri}")
    ext = os.path.splitext(uri)[1].lower()
    with storage.open_file(uri, "rb") as f:
        if ext == ".jsonl":
            df = pd.DataFrame(_json_lines(f.read().decode("utf-8"), uri))
        elif ext == ".csv":
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
        else:
            raise ValueError(f"enrich.path must be .jsonl or .csv, not {uri}")
    for column in ("name", "label"):
        if column not in df.columns:
            raise ValueError(f"{uri}: missing column '{column}'; found {', '.join(map(str, df.columns))}")
    for column in FIELDS:
        if column not in df.columns:
            df[column] = None
    df = df.astype(object).where(df.notna(), None)
    df["name"] = df["name"].astype(str).str.strip()
    return df[list(FIELDS)].drop_duplicates("name", keep="first")


def _record(video_id: str, row: dict | None, source: str, origin: str) -> dict:
    if row is None:
        return {
            "video_id": video_id,
            "source": source,
            "origin": origin,
            "error": "not in the precomputed file",
        }
    try:
        return {
            "video_id": video_id,
            "origin": origin,
            # An empty label is allowed here (a description-only source); a wrong one is not.
            "label": check_label(row["label"]) if row["label"] else None,
            "keywords": join_keywords(row["keywords"]),
            "description": str(row["description"] or "").strip(),
            "source": source,
        }
    except ValueError as err:
        raw = json.dumps({k: row[k] for k in FIELDS}, ensure_ascii=False, default=str)
        return {
            "video_id": video_id,
            "source": source,
            "origin": origin,
            "error": f"invalid row: {err}",
            "raw": raw,
        }


def import_precomputed(uri: str, video_ids: Sequence[str], source: str) -> pd.DataFrame:
    """One enrichment record of ``source`` per video in ``video_ids``; bad or missing rows carry an error."""
    rows = read_precomputed(uri).set_index("name", drop=False).to_dict("index")
    origin = f"precomputed:{os.path.basename(uri)}"
    return pd.DataFrame([_record(v, rows.get(v), source, origin) for v in video_ids])
