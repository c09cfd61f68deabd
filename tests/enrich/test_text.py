"""The enriched text template (pure) and the tables later stages read: text inputs and LLM labels."""

from __future__ import annotations

import pandas as pd
import pytest
from chat_server import write_run

from ecmf_ray.config import load_config
from ecmf_ray.enrich import build_enriched_text, enriched_texts, llm_labels
from ecmf_ray.enrich.job import run_enrich
from ecmf_ray.enrich.sources import resolve_sources
from ecmf_ray.enrich.table import enrichment_path, write_enrichment
from ecmf_ray.enrich.text import resolve_template, text_label_sources

# One video's values from the one default source (no enrich.sources), named by source.
ROW = {"llm.label": "happy", "llm.keywords": "开心, 笑", "llm.description": "语气轻快"}


def _enrich_cfg(*overrides: str):
    return load_config([], list(overrides)).enrich


def test_default_template_uses_every_field() -> None:
    assert (
        build_enriched_text("今天真好", ROW, _enrich_cfg())
        == "今天真好[SEP]情绪:happy[SEP]关键词:开心, 笑[SEP]语气轻快"
    )


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        (["enrich.use_keywords=false", "enrich.use_description=false"], "今天真好[SEP]情绪:happy"),
        (["enrich.use_label=false"], "今天真好[SEP]关键词:开心, 笑[SEP]语气轻快"),
        (["enrich.use_label=false", "enrich.use_keywords=false", "enrich.use_description=false"], "今天真好"),
    ],
)
def test_switches_drop_whole_pieces(switches: list[str], expected: str) -> None:
    assert build_enriched_text("今天真好", ROW, _enrich_cfg(*switches)) == expected


def test_empty_fields_and_missing_rows_drop_their_pieces() -> None:
    cfg = _enrich_cfg()
    empty = {"llm.label": None, "llm.keywords": "", "llm.description": "d"}
    assert build_enriched_text("好", empty, cfg) == "好[SEP]d"
    assert build_enriched_text("好", None, cfg) == "好"
    assert build_enriched_text(None, ROW, cfg) == "情绪:happy[SEP]关键词:开心, 笑[SEP]语气轻快"


def test_custom_template_and_separator() -> None:
    cfg = _enrich_cfg(
        "enrich.text_template='{text} | emotion: {label} ({keywords})'", "enrich.template_separator=' | '"
    )
    assert build_enriched_text("so good", ROW, cfg) == "so good | emotion: happy (开心, 笑)"
    bad = _enrich_cfg("enrich.text_template='{text}[SEP]{mood}'")
    with pytest.raises(ValueError, match=r"\{mood\}: 'mood' is not a field"):
        build_enriched_text("x", ROW, bad)


def test_enriched_texts_and_llm_labels_read_the_run(tmp_path) -> None:
    run_dir = str(tmp_path)
    write_run(run_dir, {"a": "今天真好", "b": "唉", "c": ""})
    records = pd.DataFrame(
        [
            {
                "video_id": "a",
                "label": "happy",
                "keywords": "开心, 笑",
                "description": "语气轻快",
                "source": "t",
            },
            {"video_id": "b", "source": "t", "error": "invalid answer", "raw": "{"},
        ]
    )
    write_enrichment(records, enrichment_path(run_dir))
    manifest = pd.DataFrame({"video_id": ["a", "b", "c"], "text": ["今天真好", "唉", None]})

    plain = enriched_texts(load_config([], [f"run_dir={run_dir}"]), manifest)
    assert plain.to_dict() == {"a": "今天真好", "b": "唉", "c": ""}

    on = load_config([], [f"run_dir={run_dir}", "enrich.enabled=true", "enrich.use_description=false"])
    texts = enriched_texts(on, manifest)
    assert texts.index.name == "video_id"
    assert texts.to_dict() == {"a": "今天真好[SEP]情绪:happy[SEP]关键词:开心, 笑", "b": "唉", "c": ""}

    assert llm_labels(run_dir)["t"].to_dict() == {"a": "happy", "b": None}


def test_missing_enrichment_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="ecmf enrich"):
        llm_labels(str(tmp_path))


TWO_SOURCES = (
    "enrich.sources=[{name: text_llm, fields: [label, keywords]},"
    " {name: av_llm, media: [frames, audio], fields: [label, keywords, description]}]"
)


def test_default_template_names_every_sources_fields() -> None:
    cfg = _enrich_cfg(TWO_SOURCES)
    assert resolve_template(cfg, resolve_sources(cfg)) == (
        "{text}[SEP]情绪:{text_llm.label}[SEP]情绪:{av_llm.label}[SEP]关键词:{text_llm.keywords}"
        "[SEP]关键词:{av_llm.keywords}[SEP]{av_llm.description}"
    )
    one = _enrich_cfg()
    assert resolve_template(one, resolve_sources(one)) == (
        "{text}[SEP]情绪:{llm.label}[SEP]关键词:{llm.keywords}[SEP]{llm.description}"
    )
    # {*.field} with several fields: one copy per source that gives all of them.
    pair = _enrich_cfg(TWO_SOURCES, "enrich.text_template='{text}[SEP]{*.label}: {*.description}'")
    assert resolve_template(pair, resolve_sources(pair)) == "{text}[SEP]{av_llm.label}: {av_llm.description}"


def test_every_sources_fields_reach_the_text_and_a_missing_one_drops_its_piece(tmp_path) -> None:
    run_dir = str(tmp_path)
    write_run(run_dir, {"a": "今天真好", "b": "唉"})
    records = pd.DataFrame(
        [
            {"video_id": "a", "source": "text_llm", "label": "happy", "keywords": "开心"},
            {"video_id": "a", "source": "av_llm", "label": "surprise", "keywords": "跳起来",
             "description": "笑着跳起来"},
            {"video_id": "b", "source": "text_llm", "label": "sad", "keywords": "难过"},
            {"video_id": "b", "source": "av_llm", "error": "media: NoVideoStream: the file has no video stream"},
        ]
    )  # fmt: skip
    write_enrichment(records, enrichment_path(run_dir))
    manifest = pd.DataFrame({"video_id": ["a", "b"], "text": ["今天真好", "唉"]})

    default = load_config([], [f"run_dir={run_dir}", "enrich.enabled=true", TWO_SOURCES])
    assert enriched_texts(default, manifest).to_dict() == {
        "a": "今天真好[SEP]情绪:happy[SEP]情绪:surprise[SEP]关键词:开心[SEP]关键词:跳起来[SEP]笑着跳起来",
        "b": "唉[SEP]情绪:sad[SEP]关键词:难过",
    }
    named = load_config(
        [],
        [f"run_dir={run_dir}", "enrich.enabled=true", TWO_SOURCES,
         "enrich.text_template='{text}[SEP]{text_llm.label}/{av_llm.label}[SEP]{av_llm.description}'"],
    )  # fmt: skip
    assert enriched_texts(named, manifest).to_dict() == {
        "a": "今天真好[SEP]happy/surprise[SEP]笑着跳起来",
        "b": "唉",
    }
    # One named source reads only its own rows; a plain {field} is that one source's.
    av_only = "enrich.sources=[{name: av_llm, media: [frames, audio], fields: [label, description]}]"
    only = load_config([], [f"run_dir={run_dir}", "enrich.enabled=true", av_only])
    assert enriched_texts(only, manifest).to_dict() == {
        "a": "今天真好[SEP]情绪:surprise[SEP]笑着跳起来",
        "b": "唉",
    }
    plain = load_config([], [f"run_dir={run_dir}", "enrich.enabled=true", av_only,
                             "enrich.text_template='{text}[SEP]{label}'"])  # fmt: skip
    assert enriched_texts(plain, manifest).to_dict() == {"a": "今天真好[SEP]surprise", "b": "唉"}
    labels = llm_labels(run_dir)
    assert labels.loc["a"].to_dict() == {"av_llm": "surprise", "text_llm": "happy"}
    assert labels.loc["b", "av_llm"] is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{text}[SEP]{gpt.label}",
            r"\{gpt.label\}: no source is named 'gpt'; the sources are text_llm \(label",
        ),
        ("{text}[SEP]{text_llm.description}", r"\{text_llm.description\}: source 'text_llm' does not give"),
        ("{text}[SEP]{av_llm.mood}", r"\{av_llm.mood\}: 'mood' is not a field"),
        ("{text}[SEP]{*.mood}", r"\{\*.mood\}: 'mood' is not a field"),
        ("{text}[SEP]{label}", r"\{label\}, but sources text_llm, av_llm give it; name the source"),
    ],
)
def test_a_template_no_source_can_fill_is_an_error_at_config_time(
    tmp_path, template: str, message: str
) -> None:
    cfg = load_config(
        [], [f"run_dir={tmp_path}", "enrich.enabled=true", TWO_SOURCES, f"enrich.text_template='{template}'"]
    )
    # Before any enrichment exists: the enrich job and the text branch refuse it alike.
    with pytest.raises(ValueError, match=message):
        run_enrich(cfg)
    with pytest.raises(ValueError, match=message):
        enriched_texts(cfg, pd.DataFrame({"video_id": ["a"], "text": ["x"]}))


def test_a_source_missing_from_the_table_is_an_error(tmp_path) -> None:
    run_dir = str(tmp_path)
    write_enrichment(pd.DataFrame([{"video_id": "a", "source": "text_llm", "label": "happy"}]),
                     enrichment_path(run_dir))  # fmt: skip
    cfg = load_config([], [f"run_dir={run_dir}", "enrich.enabled=true", TWO_SOURCES])
    with pytest.raises(ValueError, match=r"no rows from source\(s\) \['av_llm'\]"):
        enriched_texts(cfg, pd.DataFrame({"video_id": ["a"], "text": ["x"]}))


def test_text_label_sources() -> None:
    on = ["enrich.enabled=true", TWO_SOURCES]
    assert text_label_sources(load_config([], on).enrich) == {"text_llm", "av_llm"}
    one = [*on, "enrich.text_template='{text}[SEP]{text_llm.label}[SEP]{*.description}'"]
    assert text_label_sources(load_config([], one).enrich) == {"text_llm"}
    assert text_label_sources(load_config([], [*on, "enrich.use_label=false"]).enrich) == set()
    assert text_label_sources(load_config([], [TWO_SOURCES]).enrich) == set()
