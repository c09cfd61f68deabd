"""The finalize job on Ray, end to end on the session's finished run (tests/finished_run.py): its outputs,
a rerun that trains nothing, other relabel rules on the trained voters, and folds trained side by side."""

import json
from itertools import combinations
from pathlib import Path

import pandas as pd

from ecmf_ray.finalize.experiments import with_overrides
from ecmf_ray.finalize.job import run_finalize
from ecmf_ray.finalize.relabel import run_relabel
from tests.finished_run import training_time_rows


def test_outputs(finished_run):
    run_dir, summary = finished_run.run_dir, finished_run.summary
    final = f"{run_dir}/final"
    relabel = pd.read_parquet(f"{final}/relabel.parquet")
    assert list(relabel.columns) == ["video_id", "original", "refined", "votes", "changed"]
    assert len(relabel) == 48
    queue = pd.read_csv(f"{final}/review_queue.csv")
    assert list(queue.columns) == ["video_id", "original", "votes", "refined"]
    flows = pd.read_csv(f"{final}/relabel_flows.csv", index_col=0)
    assert flows.to_numpy().sum() == 48

    sub = pd.read_csv(f"{final}/submission.csv")
    manifest = pd.read_parquet(f"{run_dir}/manifest.parquet")
    assert list(sub.columns) == ["name", "discrete"]
    assert sorted(sub["name"]) == sorted(manifest.loc[manifest["split"].eq("test"), "video_id"])
    assert summary["test_videos"] == len(sub)
    assert summary["ensemble_oof_waf"] >= summary["members_mean_oof_waf"]

    report = Path(summary["report"]).read_text()
    for png in ("confusion.png", "per_class_f1.png", "relabel_flows.png"):
        assert png in report
        with open(f"{final}/{png}", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| Baseline |" in report and "| + Ensemble learning |" in report and "noisy labels fixed" in report
    assert "## Self-training with pseudo-labels" in report
    # 2 weak classifiers + 2 members + 2 self-trained members; the Baseline row is the pipeline's
    # train/ecmf and the "+ relabel" row the ecmf member's run.
    experiments = sorted(Path(run_dir, "train").glob("final-*"))
    assert len(experiments) == 6
    metrics = json.loads((experiments[0] / "metrics.json").read_text())
    assert metrics["folds"] == 2


def test_rerun_trains_nothing(finished_run):
    run_dir, summary = finished_run.run_dir, finished_run.summary
    folds = sorted(Path(run_dir, "train").glob("*/folds/*/result.json"))
    written = [f.stat().st_mtime_ns for f in folds]
    again = run_finalize(finished_run.config())
    assert again["ensemble_oof_waf"] == summary["ensemble_oof_waf"]
    assert sorted(Path(run_dir, "train").glob("*/folds/*/result.json")) == folds  # no new experiment
    assert [f.stat().st_mtime_ns for f in folds] == written  # no fold trained again


def test_reviewed_decisions_and_the_tie_rule_on_the_trained_sources(finished_run, tmp_path):
    """finalize.relabel.reviewed and tie=probability, on the weak classifiers finalize trained (found, not retrained)."""
    run_dir, cfg = finished_run.run_dir, finished_run.config()
    first = pd.read_parquet(f"{run_dir}/final/relabel.parquet").set_index("video_id")
    changed = first.index[first["changed"]][0]  # a person rejects one change and relabels another video
    kept = first.index[~first["changed"]][0]
    other = "sad" if first.loc[kept, "original"] != "sad" else "happy"
    pd.DataFrame({"video_id": [changed, kept], "label": [first.loc[changed, "original"], other]}).to_csv(
        tmp_path / "reviewed.csv", index=False
    )
    reviewed = run_relabel(
        with_overrides(cfg, [f"finalize.relabel.reviewed={tmp_path}/reviewed.csv"], "t"), str(tmp_path / "a")
    )[0].set_index("video_id")
    assert (
        not reviewed.loc[changed, "changed"]
        and reviewed.loc[changed, "refined"] == first.loc[changed, "original"]
    )
    assert reviewed.loc[kept, "refined"] == other and reviewed.loc[kept, "changed"]
    others = first.index.difference([changed, kept])
    assert reviewed.loc[others, "refined"].equals(first.loc[others, "refined"])

    # Two sources: a split vote is a tie. keep leaves the label; probability takes one of the two votes.
    by_rule = {
        tie: run_relabel(
            with_overrides(
                cfg,
                [
                    "finalize.relabel.rule=plurality",
                    f"finalize.relabel.tie={tie}",
                    "finalize.relabel.min_votes=1",
                ],
                "t",
            ),
            str(tmp_path / tie),
        )[0].set_index("video_id")
        for tie in ("keep", "probability")
    }
    votes = by_rule["keep"]["votes"].str.findall(r":(\w+)")
    split = votes.map(lambda v: len(set(v)) == 2)
    assert split.any()
    assert (by_rule["keep"].loc[split, "refined"] == by_rule["keep"].loc[split, "original"]).all()
    chosen = by_rule["probability"]["refined"]
    assert all(chosen[v] in votes[v] for v in split.index[split])
    assert chosen[~split].equals(by_rule["keep"].loc[~split, "refined"])


def overlaps(spans: list[tuple[str, str]]) -> bool:
    """Whether two of the spans overlap in time."""
    return any(a[0] < b[1] and b[0] < a[1] for a, b in combinations(spans, 2))


def test_each_waves_folds_train_side_by_side(finished_run):
    """On 2 CPUs, each wave trains two folds at once, measured from each fold's own start and end as its
    worker recorded them. One fold at a time (finalize.max_concurrent_folds=1) fails this test."""
    run_dir = finished_run.run_dir
    rows = training_time_rows(Path(finished_run.summary["report"]).read_text())
    # 2 weak classifiers, 2 members, the Baseline row (train/ecmf), 2 self-trained members: each once.
    assert len(rows) == 7
    folds: dict[str, list[tuple[str, str]]] = {}
    peaks: dict[str, int] = {}
    for cells in rows.values():
        exp = Path(run_dir, "train", cells[2].strip("`"))
        metrics = json.loads((exp / "metrics.json").read_text())
        assert cells[3:5] == [metrics["started_at"], metrics["finished_at"]]
        records = [json.loads(p.read_text()) for p in exp.glob("folds/*/result.json")]
        assert len(records) == 2 and all(r["started_at"] < r["finished_at"] for r in records)
        spans = [(r["started_at"], r["finished_at"]) for r in records]
        if exp.name != "ecmf":  # the Baseline row: the pipeline's train step trained it, before finalize
            folds.setdefault(cells[6], []).extend(spans)
        peaks.setdefault(cells[6], int(cells[7]))
    assert peaks == {"weak": 2, "members": 2, "pseudo": 2}  # the report's column: never more than 2 CPUs
    assert {wave: overlaps(spans) for wave, spans in folds.items()} == dict.fromkeys(peaks, True)
    # The waves themselves run in order: relabeling needs the weak classifiers' votes, self-training the vote.
    assert max(e for _, e in folds["weak"]) <= min(s for s, _ in folds["members"])
    assert max(e for _, e in folds["members"]) <= min(s for s, _ in folds["pseudo"])
