"""`ecmf predict` end to end: a small real pipeline on synthetic clips, then held-out clips scored against truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf_ray.cli import main
from ecmf_ray.config import load_config
from ecmf_ray.data.synth import synthesize, write_broken_videos
from ecmf_ray.finalize.vote import MISSING
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.predict import predictions_table, run_predict, vote_members
from ecmf_ray.train.outputs import PROB_COLUMNS

CLIPS = {"duration_s": 2.0, "width": 160, "height": 120, "hide_prob": 0.0}


@pytest.fixture(scope="module")
def run(ray_cluster, tmp_path_factory) -> dict[str, str]:
    """A finished pipeline run (tiny models, one ensemble member), and held-out clips with their truth."""
    base = tmp_path_factory.mktemp("predict")
    synthesize(str(base / "mer"), 36, seed=0, **CLIPS)
    held = base / "held_out"
    synthesize(str(held), 12, seed=9, **CLIPS)
    write_broken_videos(str(held / "video"))  # no subtitle rows: their text is empty too
    args = [
        "--config", "local",
        f"run_dir={base / 'run'}",
        f"storage.model_cache={base / 'models'}",
        "dataset.format=mer2025",
        f"dataset.root={base / 'mer'}",
        "extract.frames.num=4",
        "train.max_epochs=40",
        "finalize.relabel.enabled=false",
        "finalize.ensemble=[{name: ecmf}]",
        "finalize.ablation=[]",
    ]  # fmt: skip
    assert main(["pipeline", *args]) == 0
    return {"run_dir": str(base / "run"), "held": str(held), "args": args}


def test_predictions_on_held_out_clips(run):
    held = Path(run["held"])
    assert (
        main(
            [
                "predict",
                *run["args"],
                f"predict.videos={held / 'video'}",
                f"predict.subtitles={held / 'subtitle_chieng.csv'}",
            ]
        )
        == 0
    )
    out = pd.read_csv(Path(run["run_dir"], "predict", "predictions.csv"), keep_default_na=False)
    assert list(out.columns) == ["name", "discrete", *PROB_COLUMNS, "error"]
    assert sorted(out["name"]) == sorted(p.stem for p in (held / "video").iterdir())

    truth = pd.read_csv(held / "truth.csv").set_index("name")["true_label"]
    scored = out[out["name"].isin(truth.index)].set_index("name")
    assert (scored["error"] == "").all()
    accuracy = float((scored["discrete"] == truth[scored.index]).mean())
    assert accuracy >= 0.6, accuracy  # chance is 1/6
    probs = scored[PROB_COLUMNS].to_numpy(dtype=float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (np.array(EMOTIONS)[probs.argmax(axis=1)] == scored["discrete"]).all()

    broken = out.set_index("name")
    # No readable video and no text: every branch failed, so no guess.
    for name in ("broken_empty", "broken_text"):
        assert broken.loc[name, "discrete"] == "" and broken.loc[name, "prob_happy"] == ""
        error = broken.loc[name, "error"]
        assert error.startswith("no usable features: frame: ") and error.endswith("text: roberta EmptyText")
    # Frames but no audio and no text: predicted from the frames (the presence mask, as in training).
    assert (
        broken.loc["broken_noaudio", "discrete"] in EMOTIONS and broken.loc["broken_noaudio", "error"] == ""
    )


def test_pipeline_trained_the_base_config_once(run):
    # finalize's only member is the pipeline's own train/ecmf: it was reused, not trained again.
    assert sorted(p.name for p in Path(run["run_dir"], "train").iterdir()) == ["ecmf"]
    members = json.loads(Path(run["run_dir"], "final", "ensemble.json").read_text())["members"]
    assert [(m["name"], Path(m["experiment_dir"]).name) for m in members] == [("ecmf", "ecmf")]


def test_refuses_another_feature_spec(run):
    cfg = load_config(
        ["local"], [a for a in run["args"] if "=" in a] + [f"predict.videos={run['held']}/video"]
    )
    cfg.extract.frames.num = 8
    with pytest.raises(ValueError, match=r"differently .*changed: frames.num.*config/extract.yaml"):
        run_predict(cfg)


def test_manifest_input_keeps_a_row_per_clip(run, tmp_path):
    held = Path(run["held"])
    names = ["sample_00001", "sample_00002"]
    manifest = pd.DataFrame(
        {"video_id": [*names, "gone"], "video_path": [*(f"{held}/video/{n}.mp4" for n in names), "nope.mp4"]}
    )
    manifest.to_csv(tmp_path / "new.csv", index=False)
    cfg = load_config(
        ["local"],
        [a for a in run["args"] if "=" in a]
        + [f"predict.manifest={tmp_path / 'new.csv'}", f"predict.output={tmp_path / 'p.csv'}"],
    )
    summary = run_predict(cfg)
    out = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(out["name"]) == [*names, "gone"] and summary["errors"] == 1
    assert out.loc[2, "discrete"] == "" and "video file not found" in out.loc[2, "error"]
    assert Path(run["run_dir"], "predict", "new", "features", "spec.json").exists()


def test_vote_members_abstains_and_errors():
    p = np.full((2, 3, 6), np.nan)
    p[0, 0] = [0.1, 0.6, 0.1, 0.1, 0.05, 0.05]
    p[1, 0] = [0.1, 0.5, 0.2, 0.1, 0.05, 0.05]
    p[0, 1] = [0.7, 0.1, 0.1, 0.05, 0.025, 0.025]  # member 1 cannot see clip 1: it abstains
    usable = ~np.isnan(p[..., 0])
    classes, mean = vote_members(p, usable)
    assert list(classes) == [1, 0, MISSING]
    np.testing.assert_allclose(mean[0], (p[0, 0] + p[1, 0]) / 2)
    np.testing.assert_allclose(mean[1], p[0, 1])
    table = predictions_table(
        ["a", "b", "c"],
        classes,
        mean,
        pd.Series({"c": "audio: open FileNotFoundError"}),
        pd.DataFrame(columns=["name", "error"]),
    )
    assert list(table["discrete"][:2]) == ["angry", "neutral"] and pd.isna(table.loc[2, "discrete"])
    assert table.loc[2, "error"] == "no usable features: audio: open FileNotFoundError"
