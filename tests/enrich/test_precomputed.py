"""The precomputed backend: JSONL and CSV imports, bad rows recorded, no Ray and no requests."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from chat_server import write_run

from ecmf_ray.config import load_config
from ecmf_ray.enrich import read_enrichment
from ecmf_ray.enrich.job import run_enrich

ROWS = [
    {"name": "a", "label": "happy", "keywords": ["开心", "笑"], "description": "语气轻快"},
    {"name": "b", "label": "Excited", "keywords": ["兴奋"], "description": "很激动"},
    {"name": "c", "label": "", "keywords": [], "description": "只有描述"},
    {"name": "a", "label": "sad", "keywords": [], "description": "a repeated name: the first wins"},
    {"name": "zzz", "label": "sad", "keywords": [], "description": "not in the manifest"},
]


def _write(path, fmt: str) -> None:
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n", encoding="utf-8")
    else:
        rows = [{**r, "keywords": ", ".join(r["keywords"])} for r in ROWS]
        pd.DataFrame(rows).to_csv(path, index=False)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_import(tmp_path, fmt: str) -> None:
    run_dir = str(tmp_path / "run")
    write_run(run_dir, {"a": "今天真好", "b": "哇", "c": "嗯", "d": "没有结果"})
    path = tmp_path / f"results.{fmt}"
    _write(path, fmt)
    cfg = load_config([], [f"run_dir={run_dir}", "enrich.backend=precomputed", f"enrich.path={path}"])

    summary = run_enrich(cfg)

    table = read_enrichment(run_dir).set_index("video_id")
    assert summary["videos"] == 4 and summary["errors"] == 2
    assert table.loc["a", ["label", "keywords", "description"]].tolist() == ["happy", "开心, 笑", "语气轻快"]
    assert table.loc["a", "error"] is None and table.loc["a", "source"] == "llm"
    assert table.loc["a", "origin"] == f"precomputed:results.{fmt}"
    assert table.loc["b", "label"] is None
    assert "'Excited' is not one of" in table.loc["b", "error"] and "兴奋" in table.loc["b", "raw"]
    assert table.loc["c", "label"] is None and table.loc["c", "description"] == "只有描述"
    assert table.loc["c", "error"] is None
    assert table.loc["d", "error"] == "not in the precomputed file"


def test_unreadable_file_fails_with_its_line(tmp_path) -> None:
    run_dir = str(tmp_path / "run")
    write_run(run_dir, {"a": "x"})
    path = tmp_path / "results.jsonl"
    path.write_text('{"name": "a", "label": "happy"}\nnot json\n', encoding="utf-8")
    cfg = load_config([], [f"run_dir={run_dir}", "enrich.backend=precomputed", f"enrich.path={path}"])
    with pytest.raises(ValueError, match="line 2"):
        run_enrich(cfg)
