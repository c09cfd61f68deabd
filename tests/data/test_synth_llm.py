"""Simulated LLM answers for the demo: derived from the synthetic truth at the given error rates, read
by the precomputed backend as two named sources, and switched on only by the demo."""

from __future__ import annotations

import pandas as pd

from ecmf_ray.config import load_config
from ecmf_ray.data.manifest import manifest_path, write_manifest
from ecmf_ray.data.synth import plan_samples
from ecmf_ray.data.synth_llm import simulated_answers, use_simulated_llms, write_simulated_answers
from ecmf_ray.enrich import enriched_texts, llm_labels
from ecmf_ray.enrich.job import run_enrich
from ecmf_ray.finalize.relabel import llm_voters
from ecmf_ray.labels import EMOTIONS


def _truth(n: int) -> pd.DataFrame:
    plans = plan_samples(n, seed=1, hide_prob=0.3)
    return pd.DataFrame(
        {
            "name": [p.name for p in plans],
            "true_label": [EMOTIONS[p.label] for p in plans],
            "hidden": [p.hidden or "" for p in plans],
            "hidden_as": ["" if p.hidden_as is None else EMOTIONS[p.hidden_as] for p in plans],
        }
    )


def test_labels_follow_the_truth_at_the_error_rate() -> None:
    truth = _truth(2000)
    answers = simulated_answers(truth, text_error=0.3, av_error=0.1, seed=0)
    av = pd.DataFrame(answers["av_llm"])
    text = pd.DataFrame(answers["text_llm"])
    assert list(av["name"]) == list(truth["name"]) and set(av["label"]) <= set(EMOTIONS)
    assert abs((av["label"] != truth["true_label"]).mean() - 0.1) < 0.03
    # The text LLM reads the transcript: where synth hid another class in the text, that class.
    shown = truth["hidden_as"].where(truth["hidden"].eq("text"), truth["true_label"])
    assert abs((text["label"] != shown).mean() - 0.3) < 0.04
    assert av["description"].str.contains("模拟").all() and text["keywords"].map(len).eq(2).all()
    exact = simulated_answers(truth, text_error=0.0, av_error=0.0, seed=0)
    assert [a["label"] for a in exact["av_llm"]] == truth["true_label"].tolist()


def test_the_demo_config_reads_two_precomputed_sources(tmp_path) -> None:
    truth = _truth(12).assign(given_label="", noisy=False, split="train")
    truth.to_csv(tmp_path / "truth.csv", index=False)
    cfg = load_config(["local"], [f"run_dir={tmp_path}"])
    assert not cfg.enrich.enabled and cfg.enrich.sources is None  # local.yaml leaves enrichment off
    use_simulated_llms(cfg, str(tmp_path), seed=0)
    assert cfg.enrich.enabled
    assert [(s.name, s.backend, list(s.media)) for s in cfg.enrich.sources] == [
        ("text_llm_sim", "precomputed", []),
        ("av_llm_sim", "precomputed", ["frames", "audio"]),
    ]
    paths = write_simulated_answers(str(tmp_path / "truth.csv"), str(tmp_path / "again"), seed=0)
    with (
        open(paths["av_llm"], encoding="utf-8") as a,
        open(cfg.enrich.sources[1].path, encoding="utf-8") as b,
    ):
        assert a.read() == b.read()  # the same seed writes the same answers


def test_the_demo_enriches_the_text_and_the_av_source_votes(tmp_path) -> None:
    """What the demo's enrich, extract (text input) and relabel steps read, without Ray or a model."""
    truth = _truth(12).assign(given_label="", noisy=False, split="train")
    truth.to_csv(tmp_path / "truth.csv", index=False)
    manifest = pd.DataFrame(
        {"video_id": truth["name"], "video_path": "/nowhere.mp4", "text": "今天", "label": truth["true_label"],
         "split": "train", "valence": None}
    )  # fmt: skip
    write_manifest(manifest, manifest_path(str(tmp_path)))
    cfg = load_config(["local"], [f"run_dir={tmp_path}"])
    use_simulated_llms(cfg, str(tmp_path), seed=0)

    summary = run_enrich(cfg)
    assert summary["rows"] == 24 and summary["errors"] == 0
    labels = llm_labels(str(tmp_path))
    assert list(labels.columns) == ["av_llm_sim", "text_llm_sim"] and labels.notna().all().all()
    texts = enriched_texts(cfg, manifest)
    # The text LLM's label and keywords and the AV LLM's (simulated) description reach the text branch.
    assert texts.str.startswith("今天[SEP]情绪:").all() and texts.str.contains("模拟回答").all()
    assert llm_voters(cfg) == ["av_llm_sim"]
