"""The finalize job on Ray, end to end on a small noisy feature run; then a rerun that trains nothing."""

import json
from pathlib import Path

import pandas as pd
import pytest
from fake_features import small_config
from noisy_run import write_noisy_run

from ecmf_ray.finalize.experiments import with_overrides
from ecmf_ray.finalize.job import run_finalize
from ecmf_ray.finalize.relabel import run_relabel

SMALL_FINALIZE = [
    "train.folds=2",
    "train.max_epochs=10",
    # Two voters: every change is a unanimous disagreement, which `auto` lets the vote decide.
    "finalize.relabel.classifiers=[audio,text]",
    "finalize.relabel.unanimous_disagreement=auto",
    "finalize.ensemble=[{name: ecmf}, {name: seed1, overrides: [seed=1]}]",
    # The second row is the ecmf member's config: shared, not trained again.
    "finalize.ablation=[{row: Baseline, labels: original}, {row: + relabel, labels: refined}]",
    "finalize.pseudo.enabled=true",
    "finalize.pseudo.threshold=0.5",
]


@pytest.fixture(scope="module")
def finalized(ray_cluster, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("finalize_run"))
    truth = write_noisy_run(run_dir, noise=0.15, n_train=120, n_test=20, p_informative=0.8, separation=5.0)
    truth.rename_axis("name").rename("true_label").reset_index().to_csv(f"{run_dir}/truth.csv", index=False)
    cfg = small_config(run_dir, *SMALL_FINALIZE, f"finalize.truth={run_dir}/truth.csv")
    return run_dir, cfg, run_finalize(cfg)


def test_outputs(finalized):
    run_dir, _, summary = finalized
    final = f"{run_dir}/final"
    relabel = pd.read_parquet(f"{final}/relabel.parquet")
    assert list(relabel.columns) == ["video_id", "original", "refined", "votes", "changed"]
    assert len(relabel) == 120
    queue = pd.read_csv(f"{final}/review_queue.csv")
    assert list(queue.columns) == ["video_id", "original", "votes", "refined"]
    flows = pd.read_csv(f"{final}/relabel_flows.csv", index_col=0)
    assert flows.to_numpy().sum() == 120

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
    # 2 weak classifiers + 2 members + the baseline row + 2 self-trained members; the "+ relabel" row
    # is the ecmf member's run.
    experiments = sorted(Path(run_dir, "train").glob("final-*"))
    assert len(experiments) == 7
    metrics = json.loads((experiments[0] / "metrics.json").read_text())
    assert metrics["folds"] == 2


def test_rerun_trains_nothing(finalized):
    run_dir, cfg, summary = finalized
    folds = sorted(Path(run_dir, "train").glob("*/folds/*/result.json"))
    written = [f.stat().st_mtime_ns for f in folds]
    again = run_finalize(cfg)
    assert again["ensemble_oof_waf"] == summary["ensemble_oof_waf"]
    assert sorted(Path(run_dir, "train").glob("*/folds/*/result.json")) == folds  # no new experiment
    assert [f.stat().st_mtime_ns for f in folds] == written  # no fold trained again


def test_reviewed_decisions_and_the_tie_rule_on_the_trained_sources(finalized, tmp_path):
    """finalize.relabel.reviewed and tie=probability, on the weak classifiers finalize trained (found, not retrained)."""
    run_dir, cfg, _ = finalized
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


def training_time_rows(report: str) -> dict[tuple[str, str], list[str]]:
    """The report's "Training time" table: (experiment, role) -> its cells."""
    section = report.split("## Training time", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {(cells[0].strip(), cells[1].strip()): [c.strip() for c in cells] for cells in rows[1:]}


def test_a_waves_experiments_train_side_by_side(finalized):
    """On 2 CPUs, each wave's experiments overlap in time (not one after another), as the report shows."""
    run_dir, _, summary = finalized
    rows = training_time_rows(Path(summary["report"]).read_text())
    # 2 weak classifiers, 2 members, the baseline row, 2 self-trained members: each listed once.
    assert len(rows) == 7
    spans = {}
    for name, cells in rows.items():
        metrics = json.loads(Path(run_dir, "train", cells[2].strip("`"), "metrics.json").read_text())
        assert cells[3:5] == [metrics["started_at"], metrics["finished_at"]]
        spans[name] = (metrics["started_at"], metrics["finished_at"])
        assert spans[name][0] < spans[name][1] and float(cells[5]) >= 0
        folds = [
            json.loads(p.read_text())
            for p in Path(run_dir, "train", cells[2].strip("`")).glob("folds/*/result.json")
        ]
        assert spans[name] == (min(f["started_at"] for f in folds), max(f["finished_at"] for f in folds))

    def overlap(a: tuple[str, str], b: tuple[str, str]) -> bool:
        return spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]

    audio, text = ("weak audio", "weak classifier"), ("weak text", "weak classifier")
    ecmf, seed1, baseline = ("ecmf", "member"), ("seed1", "member"), ("Baseline", "ablation row")
    assert overlap(audio, text)
    assert overlap(ecmf, seed1) and overlap(seed1, baseline)
    assert overlap(("ecmf", "self-trained member"), ("seed1", "self-trained member"))
    # The waves themselves run in order: relabeling needs the weak classifiers' votes.
    assert max(spans[audio][1], spans[text][1]) <= min(spans[ecmf][0], spans[seed1][0])
