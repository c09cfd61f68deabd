"""``${run_dir}/final/report.md`` and its plots (matplotlib, Agg backend: no display needed).

Plots: ``confusion.png`` (the ensemble's out-of-fold confusion matrix), ``per_class_f1.png`` (per-class
F1 of the ensemble and of every member), ``relabel_flows.png`` (original -> refined label counts).
Tables: the ensemble members, the ablation table in the shape of the paper's Table 1, the relabel flows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray import storage
from ecmf_ray.finalize.ensemble import EnsembleResult, Variant
from ecmf_ray.finalize.experiments import Experiment
from ecmf_ray.finalize.relabel import parse_votes
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.train.metrics import waf


@dataclass
class ReportInputs:
    """What finalize produced, for the report. ``truth``: video_id -> true class, when known (synthetic data)."""

    run_dir: str
    members: list[tuple[Variant, Experiment]]
    ensemble: EnsembleResult
    ablation: list[tuple[Variant, Experiment]]
    submission_rows: int
    relabel: pd.DataFrame | None = None
    flows: pd.DataFrame | None = None
    truth: pd.Series | None = None
    sections: list[str] = field(default_factory=list)  # extra markdown (the self-training round)


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.2f}%"


def truth_waf(predictions: pd.DataFrame, truth: pd.Series | None, column: str = "predicted") -> float | None:
    """WAF of ``predictions`` (video_id, ``column``) on the videos with a known true label."""
    if truth is None:
        return None
    merged = predictions.merge(truth.rename("truth"), left_on="video_id", right_index=True)
    if merged.empty:
        return None
    return waf(merged["truth"].to_numpy(), merged[column].to_numpy())


def relabel_scores(relabel: pd.DataFrame, truth: pd.Series) -> dict[str, Any]:
    """How relabeling did against known truth: noisy labels fixed, clean labels changed."""
    t = relabel.merge(truth.rename("truth"), left_on="video_id", right_index=True)
    noisy = t["original"] != t["truth"]
    return {
        "noisy": int(noisy.sum()),
        "fixed": int((noisy & (t["refined"] == t["truth"])).sum()),
        "clean": int((~noisy).sum()),
        "clean_changed": int((~noisy & t["changed"]).sum()),
        "noisy_review": int((noisy & t["review"]).sum()),
        "clean_review": int((~noisy & t["review"]).sum()),
    }


def source_vote_rows(relabel: pd.DataFrame, truth: pd.Series | None) -> tuple[list[tuple], list[str]]:
    """Per voting source: votes cast, how many agree with the original label, and (with truth) how many
    are right. Returns the rows and the header for :func:`markdown_table`."""
    votes = parse_votes(relabel.set_index("video_id")["votes"])
    original = relabel.set_index("video_id")["original"]
    known = truth.reindex(votes.index) if truth is not None else None
    rows = []
    for source in votes.columns:
        cast = votes[source].notna()
        row = [source, int(cast.sum()), int((votes[source] == original)[cast].sum())]
        if known is not None:
            row.append(pct(float((votes[source] == known)[cast].mean())) if cast.any() else "-")
        rows.append(tuple(row))
    header = ["source", "votes", "agree with the original label"]
    return rows, header + (["right (true label)"] if truth is not None else [])


def _save(fig: Any, uri: str) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(uri, buf.getvalue())


def _heatmap(matrix: np.ndarray, title: str, xlabel: str, ylabel: str, uri: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(len(EMOTIONS)), yticks=range(len(EMOTIONS)), title=title, xlabel=xlabel, ylabel=ylabel
    )
    ax.set_xticklabels(EMOTIONS, rotation=45, ha="right")
    ax.set_yticklabels(EMOTIONS)
    threshold = matrix.max() / 2 if matrix.size and matrix.max() else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, uri)


def _per_class_f1(series: dict[str, dict[str, float]], uri: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    x = np.arange(len(EMOTIONS))
    for i, (name, f1) in enumerate(series.items()):
        ax.bar(x + i * width, [f1[c] for c in EMOTIONS], width, label=name)
    ax.set(xticks=x + 0.4 - width / 2, ylim=(0, 1), ylabel="F1 (out-of-fold)", title="Per-class F1")
    ax.set_xticklabels(EMOTIONS)
    ax.legend(fontsize="small", ncol=2)
    _save(fig, uri)


def write_report(out_dir: str, inputs: ReportInputs) -> str:
    """Write the plots and ``report.md`` under ``out_dir``; returns the report's URI."""
    import matplotlib

    matplotlib.use("Agg")
    ens, truth = inputs.ensemble, inputs.truth
    lines = [
        "# ECMF report",
        "",
        f"Run: `{inputs.run_dir}`. Submission: `submission.csv`, {inputs.submission_rows} test videos "
        f"(columns `name, discrete`).",
        "",
        "Scores are weighted F1 (WAF). *cv_waf*: mean over folds of each fold's held-out WAF; *OOF WAF*: over all "
        "out-of-fold predictions pooled; both against the labels the model learnt (the refined ones after "
        "relabeling)."
        + (" *Test WAF*: test predictions against the known true labels." if truth is not None else ""),
        "",
    ]

    if inputs.relabel is not None and inputs.flows is not None:
        r = inputs.relabel
        _heatmap(
            inputs.flows.to_numpy(),
            "Relabel flows",
            "refined",
            "original",
            storage.join(out_dir, "relabel_flows.png"),
        )
        lines += [
            "## Relabeling (ECMF 3.4.1)",
            "",
            f"{int(r['changed'].sum())} of {len(r)} training labels changed by the vote; "
            f"{int(r['review'].sum())} samples "
            "whose every source disagrees are in `review_queue.csv`. Details: `relabel.parquet`.",
            "",
            "Votes per source (a weak classifier per modality group, and each LLM source that votes):",
            "",
            markdown_table(*source_vote_rows(r, truth)),
            "",
        ]
        if truth is not None:
            s = relabel_scores(r, truth)
            lines += [
                f"Against the true labels: {s['fixed']} of {s['noisy']} noisy labels fixed; "
                f"{s['clean_changed']} of {s['clean']} clean labels changed; "
                f"{s['noisy_review']} noisy and {s['clean_review']} clean labels queued for review.",
                "",
            ]
        changes = [
            (a, b, int(inputs.flows.loc[a, b]))
            for a in EMOTIONS
            for b in EMOTIONS
            if a != b and inputs.flows.loc[a, b]
        ]
        lines += [markdown_table(changes, ["from", "to", "labels"]) if changes else "No label changed.", ""]
        lines += ["![relabel flows](relabel_flows.png)", ""]

    member_rows = [
        (v.name, " ".join(v.overrides) or "(base config)", v.labels, f"`{e.exp_dir.rsplit('/', 1)[-1]}`",
         pct(e.cv_waf), pct(e.metrics["oof_waf"]), *([pct(truth_waf(e.test, truth))] if truth is not None else []))
        for v, e in inputs.members
    ]  # fmt: skip
    member_rows.append(
        ("**ensemble**", "majority vote, ties by mean probability", "", "", pct(ens.metrics["cv_waf"]["mean"]),
         pct(ens.metrics["oof_waf"]), *([pct(truth_waf(ens.test, truth))] if truth is not None else []))
    )  # fmt: skip
    header = ["member", "overrides", "labels", "experiment", "cv_waf", "OOF WAF"]
    lines += [
        "## Ensemble (ECMF 3.4.2)",
        "",
        markdown_table(member_rows, header + (["test WAF"] if truth is not None else [])),
        "",
        f"The ensemble's OOF WAF is {pct(ens.metrics['oof_waf'])} against a mean of "
        f"{pct(ens.metrics['members_mean_oof_waf'])} over its members.",
        "",
        "![confusion matrix](confusion.png) ![per-class F1](per_class_f1.png)",
        "",
    ]
    _heatmap(
        np.array(ens.metrics["confusion_matrix"]["matrix"]),
        "Ensemble, out-of-fold",
        "predicted",
        "label",
        storage.join(out_dir, "confusion.png"),
    )
    f1 = {
        "ensemble": ens.metrics["per_class_f1"],
        **{v.name: e.metrics["per_class_f1"] for v, e in inputs.members},
    }
    _per_class_f1(f1, storage.join(out_dir, "per_class_f1.png"))

    if inputs.ablation:
        rows = [
            (v.name, pct(e.cv_waf), pct(truth_waf(e.test, truth)) if truth is not None else "-")
            for v, e in inputs.ablation
        ]
        rows.append(
            ("+ Ensemble learning", pct(ens.metrics["cv_waf"]["mean"]), pct(truth_waf(ens.test, truth)) if truth is not None else "-")
        )  # fmt: skip
        lines += [
            "## Ablation (the shape of the paper's Table 1)",
            "",
            "Each row adds its change to every row above it (`finalize.ablation`). WAF / val is the row's cv_waf.",
            "",
            markdown_table(rows, ["Methods", "WAF / val", "WAF / test"]),
            "",
        ]
    lines += inputs.sections
    uri = storage.join(out_dir, "report.md")
    storage.write_text(uri, "\n".join(lines) + "\n")
    return uri
