"""``${run_dir}/final/report.md`` and its plots (matplotlib, Agg backend: no display needed).

Plots: ``confusion.png`` (the ensemble's out-of-fold confusion matrix), ``per_class_f1.png`` (per-class
F1 of the ensemble and of every member), ``relabel_flows.png`` (original -> refined label counts, and the
clips a person left out).
Tables: the ensemble members, the ablation table in the shape of the paper's Table 1, the relabel flows.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from ecmf_ray import storage
from ecmf_ray.finalize.ensemble import EnsembleResult, Variant
from ecmf_ray.finalize.experiments import Experiment
from ecmf_ray.finalize.relabel import parse_votes
from ecmf_ray.finalize.scores import RowScores, row_scores, selection, truth_waf
from ecmf_ray.labels import EMOTIONS, EXCLUDED
from ecmf_ray.train.outputs import fold_dir

__all__ = [
    "ReportInputs",
    "TimedRun",
    "markdown_table",
    "pct",
    "peak_concurrency",
    "truth_waf",
    "write_report",
]


@dataclass(frozen=True)
class TimedRun:
    """An experiment finalize used, its role, and the wave (one batch of fold tasks) it belongs to."""

    role: str
    wave: str
    experiment: Experiment


@dataclass
class ReportInputs:
    """What finalize produced, for the report. ``truth``: video_id -> true class, when known (synthetic data).

    ``reference``: ``video_id, label, fold``, the manifest's labels on the run's shared folds
    (:func:`ecmf_ray.finalize.scores.reference_labels`); every row is scored against them too.
    """

    run_dir: str
    members: list[tuple[Variant, Experiment]]
    ensemble: EnsembleResult
    ablation: list[tuple[Variant, Experiment]]
    submission_rows: int
    relabel: pd.DataFrame | None = None
    flows: pd.DataFrame | None = None
    truth: pd.Series | None = None
    reference: pd.DataFrame | None = None
    sections: list[str] = field(default_factory=list)  # extra markdown (the self-training round)
    timed: list[TimedRun] = field(default_factory=list)  # every run, in the order finalize used them


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.2f}%"


ORIGINAL = "WAF / val, original labels"
POOLED = "pooled, original labels"
AGREEMENT = "agreement with the vote"
FOLD_SELECTED = "WAF / val, epoch picked on the fold"
TRUTH_OOF = "OOF WAF, true labels"
TEST = "WAF / test"


def score_legend(inputs: ReportInputs) -> list[str]:
    """What each score column is scored against, and how each fold's epoch was picked."""
    modes = {selection(e.metrics)[0] for _, e in [*inputs.members, *inputs.ablation]}
    lines = [
        "Scores are weighted F1 (WAF), each against the label set its column names:",
        "",
        f"- *{ORIGINAL}*: out-of-fold predictions against the manifest's (original) labels, per fold of the "
        "run's shared folds (drawn on the original labels; every experiment holds out the same videos), then "
        f"the mean over folds; *{POOLED}*: over all out-of-fold predictions at once. The one score that "
        "compares every row with every other.",
        f"- *{AGREEMENT}*: the cv_waf against the refined labels the row learnt, i.e. how often it agrees with "
        "the relabel vote; it is not accuracy. Rows that learnt the original labels have none.",
    ]
    if inputs.truth is not None:
        lines += [
            f"- *{TRUTH_OOF}*: out-of-fold predictions against the known true labels (`finalize.truth`); "
            f"*{TEST}*: test predictions against them.",
        ]
    if "fold" in modes:
        lines += [
            "- Each fold's best epoch is picked on the same held-out fold that is then scored (as the MER2025 "
            "baselines and the paper do; `train.select_epoch: fold`), so the WAF / val figures are optimistic. "
            "`train.select_epoch=inner` picks it on an inner split of the training fold instead.",
        ]
    if "inner" in modes:
        lines += [
            "- Rows trained with `train.select_epoch=inner` pick each fold's epoch on an inner split of the "
            f"training fold, so their held-out scores are unbiased; *{FOLD_SELECTED}* gives, for them, the "
            "cv_waf against the learnt labels had the epoch been picked on the held-out fold itself.",
        ]
    return [*lines, ""]


def experiment_scores(experiment: Experiment, labels: str, inputs: ReportInputs) -> RowScores:
    return row_scores(
        experiment.oof,
        experiment.test,
        experiment.cv_waf,
        labels,
        inputs.reference,
        inputs.truth,
        selection(experiment.metrics),
    )


def _common_selection(rows: Sequence[RowScores]) -> tuple[str, None]:
    """The ensemble's epoch selection: its members' when they share one."""
    modes = {r.select_epoch for r in rows}
    return (modes.pop() if len(modes) == 1 else "mixed", None)


def score_columns(rows: Sequence[RowScores], with_truth: bool) -> list[str]:
    """The score columns that have a value in some row, in a fixed order."""
    columns = []
    if any(r.original is not None for r in rows):
        columns += [ORIGINAL, POOLED]
    if any(r.agreement is not None for r in rows):
        columns.append(AGREEMENT)
    if any(r.fold_selected is not None for r in rows):
        columns.append(FOLD_SELECTED)
    if with_truth:
        columns += [TRUTH_OOF, TEST]
    return columns


def ensemble_gain(ensemble: RowScores, members: Sequence[RowScores], metrics: dict[str, Any]) -> str:
    """One sentence: the vote against its members, on the original labels and on the labels learnt."""
    learnt = (
        f"against the {ensemble.labels} labels they learnt, {pct(metrics['oof_waf'])} against "
        f"{pct(metrics['members_mean_oof_waf'])}"
    )
    if ensemble.original is None or any(m.original is None for m in members):
        return f"The ensemble's pooled OOF WAF, {learnt}."
    mean = float(np.mean([m.original.pooled for m in members]))
    return (
        f"The ensemble's pooled OOF WAF against the original labels is {pct(ensemble.original.pooled)}, against "
        f"a mean of {pct(mean)} over its members; {learnt}."
    )


def score_cells(row: RowScores, columns: Sequence[str]) -> list[str]:
    values = {
        ORIGINAL: row.original.cv if row.original else None,
        POOLED: row.original.pooled if row.original else None,
        AGREEMENT: row.agreement,
        FOLD_SELECTED: row.fold_selected,
        TRUTH_OOF: row.truth_oof,
        TEST: row.test,
    }
    return [pct(values[c]) for c in columns]


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


def _heatmap(
    matrix: np.ndarray, title: str, xlabel: str, ylabel: str, uri: str, columns: Sequence[str] = EMOTIONS
) -> None:
    """Rows: the classes; ``columns``: the labels of the matrix's columns."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(columns)), yticks=range(len(EMOTIONS)), title=title, xlabel=xlabel, ylabel=ylabel)
    ax.set_xticklabels(columns, rotation=45, ha="right")
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


def minutes_between(started_at: str | None, finished_at: str | None) -> str:
    if not (started_at and finished_at):
        return ""
    seconds = (datetime.fromisoformat(finished_at) - datetime.fromisoformat(started_at)).total_seconds()
    return f"{seconds / 60:.1f}"


def peak_concurrency(spans: Iterable[tuple[str, str]]) -> int:
    """The most ``(start, end)`` spans open at one moment (ISO 8601 UTC times, which sort as text).

    A span that ends as another starts does not overlap it.
    """
    events = sorted(e for start, end in spans for e in ((start, 1), (end, -1)))  # at a tie, ends first
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def fold_spans(experiment: Experiment) -> list[tuple[str, str]]:
    """Each fold's own ``(started_at, finished_at)``, as its worker recorded them in ``folds/fold<k>/result.json``
    (a fold without both is left out)."""
    spans = []
    for fold in range(int(experiment.metrics["folds"])):
        result = json.loads(
            storage.read_text(storage.join(fold_dir(experiment.exp_dir, fold), "result.json"))
        )
        if result.get("started_at") and result.get("finished_at"):
            spans.append((result["started_at"], result["finished_at"]))
    return spans


def training_time(timed: Sequence[TimedRun]) -> list[str]:
    """The section listing every experiment finalize used, once, with when it trained, for how long, and
    the most folds of its wave that trained at once."""
    first: dict[str, TimedRun] = {}
    for t in timed:
        first.setdefault(t.experiment.exp_dir, t)  # each experiment once, in its first role
    unique = list(first.values())
    if not unique:
        return []
    spans = {t.experiment.exp_dir: fold_spans(t.experiment) for t in unique}
    peaks = {
        wave: peak_concurrency(s for t in unique if t.wave == wave for s in spans[t.experiment.exp_dir])
        for wave in {t.wave for t in unique}
    }
    rows = []
    for t in unique:
        start, end = t.experiment.metrics.get("started_at"), t.experiment.metrics.get("finished_at")
        folder = f"`{t.experiment.exp_dir.rsplit('/', 1)[-1]}`"
        rows.append(
            (t.experiment.name, t.role, folder, start or "", end or "", minutes_between(start, end), t.wave,
             peaks[t.wave])
        )  # fmt: skip
    return [
        "## Training time",
        "",
        "Each experiment from its first fold's start to its last fold's end (UTC). An experiment found from an "
        "earlier run keeps its own times. The experiments of a wave (weak classifiers; members and ablation "
        "rows; self-training) are one batch of fold tasks: *peak folds at once* is the most folds of the "
        "wave that trained at the same moment, from each fold's own start and end "
        "(`folds/fold<k>/result.json`); 1 means the wave trained one fold at a time "
        "(`finalize.max_concurrent_folds`).",
        "",
        markdown_table(
            rows,
            ["experiment", "role", "folder", "started", "finished", "minutes", "wave", "peak folds at once"],
        ),
        "",
    ]


def header_section(inputs: ReportInputs) -> list[str]:
    return [
        "# ECMF report",
        "",
        f"Run: `{inputs.run_dir}`. Submission: `submission.csv`, {inputs.submission_rows} test videos "
        f"(columns `name, discrete`).",
        "",
        *score_legend(inputs),
    ]


def relabel_section(
    out_dir: str, relabel: pd.DataFrame, flows: pd.DataFrame, truth: pd.Series | None
) -> list[str]:
    """Relabeling: the votes per source, the changes (``relabel_flows.png``), and how it did against truth."""
    _heatmap(
        flows.to_numpy(),
        "Relabel flows",
        "refined",
        "original",
        storage.join(out_dir, "relabel_flows.png"),
        list(flows.columns),
    )
    lines = [
        "## Relabeling (ECMF 3.4.1)",
        "",
        f"{int(relabel['changed'].sum())} of {len(relabel)} training labels changed by the vote; "
        f"{int(relabel['review'].sum())} samples "
        "whose every source disagrees are in `review_queue.csv`. Details: `relabel.parquet`.",
        "",
        f"Clips a person marked {EXCLUDED} in review: {int(relabel['refined'].eq(EXCLUDED).sum())}, left "
        "out of every model trained on the refined labels (neither trained nor validated on, so no such "
        "row scores them).",
        "",
        "Votes per source (a weak classifier per modality group, and each LLM source that votes):",
        "",
        markdown_table(*source_vote_rows(relabel, truth)),
        "",
    ]
    if truth is not None:
        s = relabel_scores(relabel, truth)
        lines += [
            f"Against the true labels: {s['fixed']} of {s['noisy']} noisy labels fixed; "
            f"{s['clean_changed']} of {s['clean']} clean labels changed; "
            f"{s['noisy_review']} noisy and {s['clean_review']} clean labels queued for review.",
            "",
        ]
    changes = [
        (a, b, int(flows.loc[a, b])) for a in flows.index for b in flows.columns if a != b and flows.loc[a, b]
    ]
    lines += [markdown_table(changes, ["from", "to", "labels"]) if changes else "No label changed.", ""]
    return [*lines, "![relabel flows](relabel_flows.png)", ""]


def ensemble_section(out_dir: str, inputs: ReportInputs) -> tuple[list[str], RowScores]:
    """The members and their vote (``confusion.png``, ``per_class_f1.png``); and the vote's scores."""
    ens, truth = inputs.ensemble, inputs.truth
    member_scores = [(v, e, experiment_scores(e, v.labels, inputs)) for v, e in inputs.members]
    ensemble_scores = row_scores(
        ens.oof, ens.test, ens.metrics["cv_waf"]["mean"], inputs.members[0][0].labels if inputs.members else "refined",
        inputs.reference, truth, _common_selection([r for _, _, r in member_scores]),
    )  # fmt: skip
    columns = score_columns([r for _, _, r in member_scores] + [ensemble_scores], truth is not None)
    member_rows = [
        (v.name, " ".join(v.overrides) or "(base config)", v.labels, f"`{e.exp_dir.rsplit('/', 1)[-1]}`",
         *score_cells(r, columns))
        for v, e, r in member_scores
    ]  # fmt: skip
    member_rows.append(
        ("**ensemble**", "majority vote, ties by mean probability", ensemble_scores.labels, "",
         *score_cells(ensemble_scores, columns))
    )  # fmt: skip
    _heatmap(
        np.array(ens.metrics["confusion_matrix"]["matrix"]),
        "Ensemble, out-of-fold",
        "predicted",
        f"label learnt ({ensemble_scores.labels})",
        storage.join(out_dir, "confusion.png"),
    )
    f1 = {
        "ensemble": ens.metrics["per_class_f1"],
        **{v.name: e.metrics["per_class_f1"] for v, e in inputs.members},
    }
    _per_class_f1(f1, storage.join(out_dir, "per_class_f1.png"))
    lines = [
        "## Ensemble (ECMF 3.4.2)",
        "",
        markdown_table(member_rows, ["member", "overrides", "labels learnt", "experiment", *columns]),
        "",
        ensemble_gain(ensemble_scores, [r for _, _, r in member_scores], ens.metrics),
        "",
        "The plots below score the out-of-fold vote against the labels the members learnt "
        f"({ensemble_scores.labels}).",
        "",
        "![confusion matrix](confusion.png) ![per-class F1](per_class_f1.png)",
        "",
    ]
    return lines, ensemble_scores


def ablation_section(inputs: ReportInputs, ensemble_scores: RowScores) -> list[str]:
    """The ablation table in the shape of the paper's Table 1, ending with the ensemble's row."""
    if not inputs.ablation:
        return []
    scored = [(v.name, experiment_scores(e, v.labels, inputs)) for v, e in inputs.ablation]
    scored.append(("+ Ensemble learning", ensemble_scores))
    columns = score_columns([r for _, r in scored], inputs.truth is not None)
    if TEST not in columns:
        columns.append(TEST)  # the paper's column, empty without finalize.truth
    rows = [(name, r.labels, *score_cells(r, columns)) for name, r in scored]
    return [
        "## Ablation (the shape of the paper's Table 1)",
        "",
        "Each row adds its change to every row above it (`finalize.ablation`). Compare rows by "
        f"*{ORIGINAL}*: the same labels and the same videos per fold for every row. *{AGREEMENT}* rises "
        "with relabeling by construction (the vote became the labels) and is no measure of accuracy.",
        "",
        markdown_table(rows, ["Methods", "labels learnt", *columns]),
        "",
    ]


def write_report(out_dir: str, inputs: ReportInputs) -> str:
    """Write the plots and ``report.md`` under ``out_dir``; returns the report's URI."""
    import matplotlib

    matplotlib.use("Agg")
    lines = header_section(inputs)
    if inputs.relabel is not None and inputs.flows is not None:
        lines += relabel_section(out_dir, inputs.relabel, inputs.flows, inputs.truth)
    ensemble_lines, ensemble_scores = ensemble_section(out_dir, inputs)
    lines += ensemble_lines
    lines += ablation_section(inputs, ensemble_scores)
    lines += inputs.sections
    lines += training_time(inputs.timed)
    uri = storage.join(out_dir, "report.md")
    storage.write_text(uri, "\n".join(lines) + "\n")
    return uri
