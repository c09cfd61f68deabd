"""Where enrichment is used: the text branch's input text, and LLM labels for the relabel vote.

``enrich.text_template`` lays out the text branch's input, in pieces between
``enrich.template_separator``. A piece names fields as

- ``{text_llm.label}``: a named source's field;
- ``{*.label}``: every source's: the piece is repeated for each source (in ``enrich.sources`` order)
  that gives the field, so the default template carries every configured source's fields;
- ``{label}``: the field of the one source that gives it (an error when several do: name one).

:func:`resolve_template` expands and checks the template once (an unknown source or field is an error
naming the placeholder); :func:`build_enriched_text` renders one video's text with it, dropping each
piece whose field is empty or switched off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ecmf_ray.enrich.prompts import fill
from ecmf_ray.enrich.sources import DEFAULT_NAME, FIELDS, Source, resolve_sources
from ecmf_ray.enrich.table import read_enrichment

# Which switch turns each enrichment field on (the paper's "+GPT4-label", "+GPT4-keywords" rows).
SWITCHES: dict[str, str] = {
    "label": "use_label",
    "keywords": "use_keywords",
    "description": "use_description",
}
EVERY = "*"
# {text}, {field}, {source.field}, {*.field}; other braces are text.
NAME = re.compile(r"\{(\*\.\w+|\w+(?:\.\w+)?)\}")


def _clean(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()


def _named(name: str, sources: Sequence[Source]) -> str:
    """``name`` as ``source.field`` (``text`` and ``*.field`` as they are); an error naming the placeholder
    when no configured source gives that field, or when a plain field is ambiguous."""
    known = ", ".join(f"{s.name} ({', '.join(s.fields)})" for s in sources)
    where = f"enrich.text_template uses {{{name}}}"
    if name == "text":
        return name
    source, _, field = name.rpartition(".")
    if field not in FIELDS:
        raise ValueError(f"{where}: '{field}' is not a field; fields are {', '.join(FIELDS)}")
    if source == EVERY:
        return name
    if source:
        match = [s for s in sources if s.name == source]
        if not match:
            raise ValueError(f"{where}: no source is named '{source}'; the sources are {known}")
        if field not in match[0].fields:
            raise ValueError(f"{where}: source '{source}' does not give {field}; the sources are {known}")
        return name
    givers = [s.name for s in sources if field in s.fields]
    if len(givers) != 1:
        which = f"sources {', '.join(givers)} give it" if givers else "no source gives it"
        raise ValueError(
            f"{where}, but {which}; name the source ({{<source>.{field}}}) or use {{{EVERY}.{field}}} for "
            f"every source's; the sources are {known}"
        )
    return f"{givers[0]}.{field}"


def resolve_template(cfg_enrich: Any, sources: Sequence[Source]) -> str:
    """``enrich.text_template`` for these sources: ``{*.field}`` pieces repeated per source that gives the
    field, plain ``{field}`` named by its source. Raises naming a placeholder no source can fill."""
    sep = str(cfg_enrich.template_separator)
    pieces = []
    for piece in str(cfg_enrich.text_template).split(sep):
        names = {name: _named(name, sources) for name in NAME.findall(piece)}
        every = [name.partition(".")[2] for name in names if name.startswith(f"{EVERY}.")]
        copies = [s.name for s in sources if all(f in s.fields for f in every)] if every else [None]
        for source in copies:
            renamed = {n: named.replace(f"{EVERY}.", f"{source}.") for n, named in names.items()}
            pieces.append(NAME.sub(lambda m, r=renamed: "{" + r[m.group(1)] + "}", piece))
    return sep.join(pieces)


def build_enriched_text(
    text: str | None, values: Mapping[str, Any] | None, cfg_enrich: Any, template: str | None = None
) -> str:
    """The transcript with the enabled enrichment fields, laid out by the resolved template.

    ``values``: ``source.field`` -> value for one video. ``template``: :func:`resolve_template`'s result
    (resolved from ``cfg_enrich`` when not given). The template is cut at ``enrich.template_separator``;
    a piece is dropped when a field it uses is switched off or empty, so "情绪:{text_llm.label}" vanishes
    whole rather than leaving "情绪:".
    """
    if template is None:
        template = resolve_template(cfg_enrich, resolve_sources(cfg_enrich))
    values = values or {}
    on = {field: bool(cfg_enrich[switch]) for field, switch in SWITCHES.items()}
    sep = str(cfg_enrich.template_separator)
    kept = []
    for piece in template.split(sep):
        filled = {}
        for name in NAME.findall(piece):
            field = name.rpartition(".")[2]
            filled[name] = _clean(text) if name == "text" else _clean(values.get(name)) if on[field] else ""
        if all(filled.values()):
            kept.append(fill(piece, filled))
    return sep.join(kept)


def text_label_sources(cfg_enrich: Any) -> set[str]:
    """The sources whose label the text branch encodes (so a vote of theirs would count twice)."""
    if not cfg_enrich.enabled or not cfg_enrich.use_label:
        return set()
    template = resolve_template(cfg_enrich, resolve_sources(cfg_enrich))
    return {name.partition(".")[0] for name in NAME.findall(template) if name.endswith(".label")}


def template_values(table: pd.DataFrame, sources: Sequence[Source]) -> dict[str, dict[str, Any]]:
    """video_id -> {``source.field``: value} from the enrichment table.

    Without ``enrich.sources`` (the one source ``llm``) every row is that source's, so a table written
    before sources had names works too; otherwise rows are matched by ``source``, and a configured
    source missing from the table is an error (the table is older than the config).
    """
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
    for source in sources:
        rows = by_source[source.name]
        for field in source.fields:
            for video_id, value in zip(rows["video_id"], rows[field], strict=True):
                values.setdefault(video_id, {})[f"{source.name}.{field}"] = value
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
    template = resolve_template(cfg.enrich, sources)
    values = template_values(read_enrichment(cfg.run_dir), sources)
    enriched = [build_enriched_text(t, values.get(v), cfg.enrich, template) for v, t in texts.items()]
    return pd.Series(enriched, index=texts.index, name="text", dtype=object)


def llm_labels(run_dir: str) -> pd.DataFrame:
    """LLM pseudo-labels for the relabel vote: index video_id, one column per source (None: no label)."""
    df = read_enrichment(run_dir)
    labels = df.pivot(index="video_id", columns="source", values="label")
    # object dtype: pandas 3 would turn a str column's None into NaN.
    return labels.astype(object).where(labels.notna(), None).rename_axis(columns=None)
