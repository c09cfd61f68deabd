"""Where enrichment is used: the text branch's input text, and LLM labels for the relabel vote.

``enrich.text_template`` names fields as ``{label}`` (the first source, in ``enrich.sources`` order,
that gives a label; with one source, simply its label) or ``{text_llm.label}`` (a named source's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ecmf_ray.enrich.prompts import PLACEHOLDER, fill
from ecmf_ray.enrich.sources import DEFAULT_NAME, FIELDS, Source, resolve_sources
from ecmf_ray.enrich.table import read_enrichment

# Which switch turns each enrichment field on (the paper's "+GPT4-label", "+GPT4-keywords" rows).
SWITCHES: dict[str, str] = {
    "label": "use_label",
    "keywords": "use_keywords",
    "description": "use_description",
}


def _clean(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def _field(name: str) -> str | None:
    """The enrichment field a template name refers to (``label`` or ``src.label``), None for ``text``."""
    field = name.rsplit(".", 1)[-1]
    if name == "text":
        return None
    if field not in FIELDS:
        raise ValueError(
            f"enrich.text_template uses {{{name}}}; known: text, {', '.join(FIELDS)} "
            f"and <source>.<field> for a source in enrich.sources"
        )
    return field


def build_enriched_text(text: str, values: Mapping[str, Any] | None, cfg_enrich: Any) -> str:
    """The transcript with the enabled enrichment fields, laid out by ``enrich.text_template``.

    ``values``: template name -> value (``label``, ``text_llm.label``, ...; an enrichment row works for
    one source). The template is cut at ``enrich.template_separator``; a piece is dropped when a field
    it uses is switched off or empty, so "情绪:{label}" vanishes whole rather than leaving "情绪:".
    """
    values = values or {}
    sep = str(cfg_enrich.template_separator)
    kept = []
    for piece in str(cfg_enrich.text_template).split(sep):
        filled = {}
        for name in PLACEHOLDER.findall(piece):
            field = _field(name)
            if field is None:
                filled[name] = _clean(text)
            else:
                filled[name] = _clean(values.get(name)) if cfg_enrich[SWITCHES[field]] else ""
        if all(filled.values()):
            kept.append(fill(piece, filled))
    return sep.join(kept)


def template_names(sources: Sequence[Source]) -> dict[str, tuple[str, str]]:
    """Every name the template may use -> (source, field): ``src.field`` and, for the first source giving
    each field, the plain ``field``."""
    names: dict[str, tuple[str, str]] = {}
    for source in sources:
        for field in source.fields:
            names[f"{source.name}.{field}"] = (source.name, field)
            names.setdefault(field, (source.name, field))
    return names


def check_template(cfg_enrich: Any, sources: Sequence[Source]) -> None:
    """Refuse a template naming a source that is not configured, or a field that source does not give.

    A plain ``{field}`` no source gives is only empty (its piece is dropped), so the default template
    works with any sources.
    """
    known = template_names(sources)
    for name in PLACEHOLDER.findall(str(cfg_enrich.text_template)):
        if _field(name) is not None and "." in name and name not in known:
            raise ValueError(
                f"enrich.text_template uses {{{name}}}, which no source gives; known: {', '.join(sorted(known))}"
            )


def text_label_sources(cfg_enrich: Any) -> set[str]:
    """The sources whose label the text branch encodes (so a vote of theirs would count twice)."""
    if not cfg_enrich.enabled or not cfg_enrich.use_label:
        return set()
    known = template_names(resolve_sources(cfg_enrich))
    used = [known[n] for n in PLACEHOLDER.findall(str(cfg_enrich.text_template)) if n in known]
    return {source for source, field in used if field == "label"}


def template_values(table: pd.DataFrame, sources: Sequence[Source]) -> dict[str, dict[str, Any]]:
    """video_id -> {template name: value} from the enrichment table.

    Without ``enrich.sources`` (the one source ``llm``) every row is that source's, so a table written
    before sources had names works too; otherwise rows are matched by ``source``, and a configured
    source missing from the table is an error (the table is older than the config).
    """
    names = template_names(sources)
    if len(sources) == 1 and sources[0].name == DEFAULT_NAME:
        repeated = table["video_id"][table["video_id"].duplicated()]
        if len(repeated):
            raise ValueError(
                f"the enrichment table holds several rows for '{repeated.iloc[0]}' (sources "
                f"{sorted(set(table['source']))}); set enrich.sources to the sources it was made with"
            )
        by_source = {sources[0].name: table}
    else:
        by_source = {s.name: table[table["source"] == s.name] for s in sources}
        missing = [name for name, rows in by_source.items() if rows.empty]
        if missing:
            raise ValueError(
                f"the enrichment table has no rows from source(s) {missing}; rerun `ecmf enrich`"
            )
    values: dict[str, dict[str, Any]] = {}
    for name, (source, field) in names.items():
        rows = by_source[source]
        for video_id, value in zip(rows["video_id"], rows[field], strict=True):
            values.setdefault(video_id, {})[name] = value
    return values


def enriched_texts(cfg: Any, manifest_df: pd.DataFrame) -> pd.Series:
    """The text-branch input of every manifest video (index ``video_id``).

    With ``enrich.enabled`` off this is the transcript itself, so the extract stage can always call
    it; with it on, the transcript enriched from ``${run_dir}/enrich/enrichment.parquet``.
    """
    texts = manifest_df.set_index("video_id")["text"]
    if not cfg.enrich.enabled:
        return texts.fillna("").astype(str).rename("text")
    sources = resolve_sources(cfg.enrich)
    check_template(cfg.enrich, sources)
    values = template_values(read_enrichment(cfg.run_dir), sources)
    enriched = [build_enriched_text(t, values.get(v), cfg.enrich) for v, t in texts.items()]
    return pd.Series(enriched, index=texts.index, name="text", dtype=object)


def llm_labels(run_dir: str) -> pd.DataFrame:
    """LLM pseudo-labels for the relabel vote: index video_id, one column per source (None: no label)."""
    df = read_enrichment(run_dir)
    labels = df.pivot(index="video_id", columns="source", values="label")
    # object dtype: pandas 3 would turn a str column's None into NaN.
    return labels.astype(object).where(labels.notna(), None).rename_axis(columns=None)
