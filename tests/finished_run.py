"""One finished run, built once per test session and shared by the tests that only read it (the
``finished_run`` fixture of tests/conftest.py): finalize's outputs and report, ``ecmf predict``, and
the pipeline's records.

``ecmf pipeline`` on synthetic MER2025 clips with noisy labels, tiny models and 2 folds: prepare,
extract, train ``train/ecmf``, then a finalize with every part switched on at its smallest: two weak
classifiers vote (relabeling), two ensemble members learn the refined labels, a two-row ablation whose
Baseline is the pipeline's ``train/ecmf`` (reused, not trained again), and one self-training round.
That is 14 folds in four waves; each wave runs two folds at once on the session's 2-CPU cluster.

A test that changes the run works on a copy (:func:`copy_run`): the run is relocatable, since every
record in it names its inputs by content, not by path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ecmf_ray.config import load_config
from ecmf_ray.data.synth import synthesize, write_broken_videos
from ecmf_ray.pipeline import run_pipeline

CLIPS = {"duration_s": 2.0, "width": 160, "height": 120, "hide_prob": 0.0}
FINALIZE = [
    "train.folds=2",
    # Two voters: every change is a unanimous disagreement, which `auto` lets the vote decide.
    "finalize.relabel.classifiers=[audio,text]",
    "finalize.relabel.unanimous_disagreement=auto",
    "finalize.ensemble=[{name: ecmf}, {name: seed1, overrides: [seed=1]}]",
    # The Baseline row is the pipeline's train/ecmf (the base config on the original labels), the
    # second the ecmf member's config: both shared, not trained again.
    "finalize.ablation=[{row: Baseline, labels: original}, {row: + relabel, labels: refined}]",
    "finalize.pseudo.enabled=true",
    "finalize.pseudo.threshold=0.5",
]


@dataclass(frozen=True)
class FinishedRun:
    """The run folder, the ``ecmf`` arguments it was made with, its finalize summary, and held-out clips
    (``held/video``, ``held/subtitle_chieng.csv``, ``held/truth.csv``) that it never saw."""

    run_dir: str
    args: list[str]
    summary: dict
    held: str

    @property
    def overrides(self) -> list[str]:
        return [a for a in self.args if "=" in a]

    def config(self, *overrides: str) -> DictConfig:
        """The run's own config, with ``overrides``."""
        return load_config(["local"], [*self.overrides, *overrides])


def build_finished_run(base: Path) -> FinishedRun:
    """Synthesise the clips and run the pipeline under ``base`` (needs a Ray session)."""
    mer = base / "mer"
    synthesize(str(mer), 48, unlabeled=8, label_noise=0.15, seed=0, **CLIPS)
    held = base / "held_out"
    synthesize(str(held), 12, seed=9, **CLIPS)
    write_broken_videos(str(held / "video"))  # no subtitle rows: their text is empty too
    args = [
        "--config", "local",
        f"run_dir={base / 'run'}",
        f"storage.model_cache={base / 'models'}",
        "dataset.format=mer2025",
        f"dataset.root={mer}",
        "extract.frames.num=4",
        *FINALIZE,
        f"finalize.truth={mer / 'truth.csv'}",
    ]  # fmt: skip
    run = FinishedRun(str(base / "run"), args, {}, str(held))
    steps = run_pipeline(run.config())
    assert [s for s, r in steps.items() if r == "complete"] == [], steps
    return FinishedRun(run.run_dir, args, steps["finalize"], str(held))


def copy_run(run: FinishedRun, to: Path) -> FinishedRun:
    """A copy of ``run`` under ``to``, for a test that changes it."""
    shutil.copytree(run.run_dir, to)
    args = [f"run_dir={to}" if a.startswith("run_dir=") else a for a in run.args]
    return FinishedRun(str(to), args, run.summary, run.held)


def training_time_rows(report: str) -> dict[tuple[str, str], list[str]]:
    """The report's "Training time" table: (experiment, role) -> its cells."""
    section = report.split("## Training time", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {(cells[0].strip(), cells[1].strip()): [c.strip() for c in cells] for cells in rows[1:]}
