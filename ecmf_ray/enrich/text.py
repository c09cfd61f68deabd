"""Where enrichment is used: the text branch's input text, and LLM labels for the relabel vote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from ecmf_ray.enrich.prompts import PLACEHOLDER, fill
from ecmf_ray.enrich.table import read_enrichment

FIELDS: tuple[str, ...] = ("text", "label", "keywords", "description")
# Which switch turns each enrichment field on (the paper's "+GPT4-label", "+GPT4-keywords" rows).
SWITCHES: dict[str, str] = {
    "label": "use_label",
    "keywords": "use_keywords",
    "description": "use_description",
}


def _clean(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def build_enriched_text(text: str, enrichment_row: Mapping[str, Any] | None, cfg_enrich: Any) -> str:
    """The transcript with the enabled enrichment fields, laid out by ``enrich.text_template``.

    The template is cut at ``enrich.template_separator``; a piece is dropped when a field it uses is
    switched off or empty, so "情绪:{label}" vanishes whole rather than leaving "情绪:".
    """
    values = {"text": _clean(text)}
    for name, switch in SWITCHES.items():
        enabled = cfg_enrich[switch] and enrichment_row is not None
        values[name] = _clean(enrichment_row.get(name)) if enabled else ""
    sep = str(cfg_enrich.template_separator)
    kept = []
    for piece in str(cfg_enrich.text_template).split(sep):
        names = PLACEHOLDER.findall(piece)
        unknown = set(names) - set(FIELDS)
        if unknown:
            raise ValueError(
                f"enrich.text_template uses {', '.join(sorted(unknown))}; known: {', '.join(FIELDS)}"
            )
        if all(values[n] for n in names):
            kept.append(fill(piece, values))
    return sep.join(kept)


def enriched_texts(cfg: Any, manifest_df: pd.DataFrame) -> pd.Series:
    """The text-branch input of every manifest video (index ``video_id``).

    With ``enrich.enabled`` off this is the transcript itself, so the extract stage can always call
    it; with it on, the transcript enriched from ``${run_dir}/enrich/enrichment.parquet``.
    """
    texts = manifest_df.set_index("video_id")["text"]
    if not cfg.enrich.enabled:
        return texts.fillna("").astype(str).rename("text")
    rows = read_enrichment(cfg.run_dir).set_index("video_id").to_dict("index")
    enriched = [build_enriched_text(t, rows.get(v), cfg.enrich) for v, t in texts.items()]
    return pd.Series(enriched, index=texts.index, name="text", dtype=object)


def llm_labels(run_dir: str) -> pd.Series:
    """LLM pseudo-labels for the relabel vote: video_id -> one of the six classes, or None."""
    df = read_enrichment(run_dir)
    # object dtype: pandas 3 would turn a str Series' None into NaN.
    index = pd.Index(df["video_id"], name="video_id")
    return pd.Series(df["label"].tolist(), index=index, name="llm_label", dtype=object)
