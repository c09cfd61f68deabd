"""SIMULATED LLM answers for a synthetic dataset, so the demo can run the paper's two LLM sources offline.

No model is asked. From ``truth.csv`` (written by :func:`ecmf_ray.data.synth.synthesize`) two answer files
are derived in the ``precomputed`` backend's JSONL format:

- ``simulated_text_llm.jsonl`` stands in for the text LLM (GPT-4 in the paper): it "reads" the
  transcript, so its label is the class the transcript carries, and it gives keywords;
- ``simulated_av_llm.jsonl`` stands in for the audio-visual LLM (Qwen-Omni): it "watches and listens",
  so its label is the clip's true class, and it gives a description.

Each label is replaced by another class at the given error rate, so the votes are informative but
imperfect. The descriptions say they are simulated. Real runs use ``ecmf enrich`` against real models.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray.data.synth import PHRASES, TRUTH_FILE
from ecmf_ray.labels import EMOTIONS, NUM_CLASSES

TEXT_FILE = "simulated_text_llm.jsonl"
AV_FILE = "simulated_av_llm.jsonl"
EMOTION_ZH = {
    "neutral": "平静",
    "angry": "生气",
    "happy": "开心",
    "sad": "难过",
    "worried": "担忧",
    "surprise": "惊讶",
}


def noisy_labels(labels: pd.Series, error_rate: float, rng: np.random.Generator) -> pd.Series:
    """``labels`` with each one replaced, at ``error_rate``, by one of the other classes."""
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error rate must be in [0, 1], got {error_rate}")
    index = labels.map(EMOTIONS.index).to_numpy()
    flip = rng.random(len(index)) < error_rate
    shifted = (index + rng.integers(1, NUM_CLASSES, size=len(index))) % NUM_CLASSES
    return pd.Series(np.array(EMOTIONS)[np.where(flip, shifted, index)], index=labels.index)


def simulated_answers(
    truth: pd.DataFrame, *, text_error: float, av_error: float, seed: int
) -> dict[str, list[dict]]:
    """The two answer lists (``text_llm``, ``av_llm``), one answer per clip in ``truth``."""
    rng = np.random.default_rng(seed)
    # What the transcript shows: another class where synth hid the text's signal.
    text_class = truth["hidden_as"].where(
        truth["hidden"].eq("text") & truth["hidden_as"].ne(""), truth["true_label"]
    )
    text_labels = noisy_labels(text_class, text_error, rng)
    av_labels = noisy_labels(truth["true_label"], av_error, rng)
    text_rows, av_rows = [], []
    for name, text_label, av_label in zip(truth["name"], text_labels, av_labels, strict=True):
        keywords = [phrase for phrase, _ in PHRASES[text_label][:2]]
        text_rows.append({"name": name, "label": text_label, "keywords": keywords})
        description = f"（模拟回答）画面和声音显示说话人{EMOTION_ZH[av_label]}"
        av_rows.append({"name": name, "label": av_label, "description": description})
    return {"text_llm": text_rows, "av_llm": av_rows}


def write_simulated_answers(
    truth_csv: str, out_dir: str, *, text_error: float = 0.3, av_error: float = 0.15, seed: int = 0
) -> dict[str, str]:
    """Write both answer files under ``out_dir``; returns source name -> file."""
    truth = pd.read_csv(truth_csv, dtype=str, keep_default_na=False)
    answers = simulated_answers(truth, text_error=text_error, av_error=av_error, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"text_llm": os.path.join(out_dir, TEXT_FILE), "av_llm": os.path.join(out_dir, AV_FILE)}
    for source, rows in answers.items():
        with open(paths[source], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return paths


def simulated_sources(paths: dict[str, str]) -> list[dict[str, Any]]:
    """``enrich.sources`` entries that read the simulated files, shaped like the paper's two LLMs.

    The names carry ``_sim`` so that every table and report shows the votes are simulated.
    """
    return [
        {"name": "text_llm_sim", "backend": "precomputed", "path": paths["text_llm"], "media": [],
         "fields": ["label", "keywords"]},
        {"name": "av_llm_sim", "backend": "precomputed", "path": paths["av_llm"], "media": ["frames", "audio"],
         "fields": ["label", "description"]},
    ]  # fmt: skip


def use_simulated_llms(cfg: Any, data_root: str, seed: int) -> None:
    """Turn on enrichment in ``cfg`` with the two simulated sources (files written once, under
    ``data_root/llm_simulated``), unless ``enrich.sources`` is already configured."""
    if cfg.enrich.sources:
        return
    out_dir = os.path.join(data_root, "llm_simulated")
    paths = {"text_llm": os.path.join(out_dir, TEXT_FILE), "av_llm": os.path.join(out_dir, AV_FILE)}
    if not all(os.path.exists(p) for p in paths.values()):
        write_simulated_answers(os.path.join(data_root, TRUTH_FILE), out_dir, seed=seed)
    cfg.enrich.enabled = True
    cfg.enrich.sources = simulated_sources(paths)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="write SIMULATED text and audio-visual LLM answers for a synthetic dataset"
    )
    parser.add_argument("truth_csv", help="truth.csv written by `ecmf synth`")
    parser.add_argument("out_dir")
    parser.add_argument("--text-error", type=float, default=0.3, help="fraction of wrong text-LLM labels")
    parser.add_argument(
        "--av-error", type=float, default=0.15, help="fraction of wrong audio-visual LLM labels"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_simulated_answers(args.truth_csv, args.out_dir, text_error=args.text_error,
                                    av_error=args.av_error, seed=args.seed)  # fmt: skip
    for source, path in paths.items():
        print(f"{source}: {path}")


if __name__ == "__main__":
    main()
