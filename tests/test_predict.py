"""`ecmf predict` end to end on the session's finished run (tests/finished_run.py): held-out clips scored
against truth, and the run's own test clips, which must get the submission's labels and probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecmf_ray.cli import main
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.predict import predictions_table, run_predict, vote_members
from ecmf_ray.train.outputs import PROB_COLUMNS


@pytest.fixture(scope="module")
def held_out(finished_run) -> pd.DataFrame:
    """`ecmf predict` on the held-out clips folder, with the default output."""
    held = Path(finished_run.held)
    args = [f"predict.videos={held / 'video'}", f"predict.subtitles={held / 'subtitle_chieng.csv'}"]
    assert main(["predict", *finished_run.args, *args]) == 0
    return pd.read_csv(
        Path(finished_run.run_dir, "predict", "video", "predictions.csv"), keep_default_na=False
    )


def test_predictions_on_held_out_clips(finished_run, held_out):
    out, held = held_out, Path(finished_run.held)
    assert list(out.columns) == ["name", "discrete", *PROB_COLUMNS, "error"]
    assert sorted(out["name"]) == sorted(p.stem for p in (held / "video").iterdir())

    truth = pd.read_csv(held / "truth.csv").set_index("name")["true_label"]
    scored = out[out["name"].isin(truth.index)].set_index("name")
    assert (scored["error"] == "").all()
    accuracy = float((scored["discrete"] == truth[scored.index]).mean())
    assert accuracy >= 0.6, accuracy  # chance is 1/6
    probs = out[PROB_COLUMNS].to_numpy(dtype=float)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (np.array(EMOTIONS)[probs.argmax(axis=1)] == out["discrete"]).all()

    broken = out.set_index("name")
    # No readable video and no text: no usable branch. Labelled as the submission labels such a clip
    # (from a blank input), and flagged.
    for name in ("broken_empty", "broken_text"):
        assert broken.loc[name, "discrete"] in EMOTIONS
        error = broken.loc[name, "error"]
        assert error.startswith("no usable features: frame: ") and error.endswith("text: roberta EmptyText")
    # Frames but no audio and no text: predicted from the frames (the presence mask, as in training).
    assert (
        broken.loc["broken_noaudio", "discrete"] in EMOTIONS and broken.loc["broken_noaudio", "error"] == ""
    )


@pytest.fixture(scope="module")
def own_test(finished_run, held_out, tmp_path_factory) -> tuple[pd.DataFrame, dict, Path]:
    """`ecmf predict` on a manifest file: the run's own test clips, then one whose video is gone, written to
    an output of its own. Its predictions table, summary and output path; after ``held_out``, so that a
    second input's outputs are seen to go beside the first's."""
    run_dir = Path(finished_run.run_dir)
    manifest = pd.read_parquet(run_dir / "manifest.parquet")
    test = manifest.loc[manifest["split"].eq("test"), ["video_id", "video_path", "text"]]
    gone = pd.DataFrame({"video_id": ["gone"], "video_path": ["nope.mp4"], "text": [""]})
    folder = tmp_path_factory.mktemp("own_test")
    pd.concat([test, gone]).to_csv(folder / "own_test.csv", index=False)
    output = folder / "predictions.csv"
    cfg = finished_run.config(f"predict.manifest={folder / 'own_test.csv'}", f"predict.output={output}")
    summary = run_predict(cfg)
    return pd.read_csv(output, keep_default_na=False), summary, output


def test_the_runs_own_test_clips_get_the_submission(finished_run, held_out, own_test):
    """Predict and finalize agree: the submission's labels, ensemble_test.parquet's probabilities; and a
    second input's predictions go beside its own features, never over the first's."""
    run_dir = Path(finished_run.run_dir)
    members = pd.read_json(run_dir / "final" / "ensemble.json", typ="series")["members"]
    assert len(members) >= 2
    out = own_test[0].set_index("name").drop(index="gone")
    assert (out["error"] == "").all()
    submission = pd.read_csv(run_dir / "final" / "submission.csv").set_index("name")["discrete"]
    assert sorted(out.index) == sorted(submission.index)
    assert out["discrete"].equals(submission.reindex(out.index))
    ensemble = pd.read_parquet(run_dir / "final" / "ensemble_test.parquet").set_index("video_id")
    np.testing.assert_allclose(
        out[PROB_COLUMNS].to_numpy(dtype=float), ensemble.loc[out.index, PROB_COLUMNS].to_numpy(), atol=1e-6
    )
    assert (run_dir / "predict" / "own_test" / "features" / "spec.json").exists()
    # The held-out folder's predictions are still there, untouched.
    kept = pd.read_csv(run_dir / "predict" / "video" / "predictions.csv", keep_default_na=False)
    assert kept.equals(held_out)


def test_manifest_input_keeps_a_row_per_clip_in_its_order(finished_run, own_test):
    out, summary, output = own_test
    manifest = pd.read_csv(Path(output).parent / "own_test.csv")
    assert list(out["name"]) == list(manifest["video_id"]) and summary["errors"] == 1
    gone = out.set_index("name").loc["gone"]
    assert gone["discrete"] == "" and "video file not found" in gone["error"]
    assert not Path(finished_run.run_dir, "predict", "own_test", "predictions.csv").exists()  # predict.output


def test_refuses_another_feature_spec(finished_run):
    cfg = finished_run.config(f"predict.videos={finished_run.held}/video")
    cfg.extract.frames.num = 8
    with pytest.raises(ValueError, match=r"differently .*changed: .*frame.frames.num.*config/extract.yaml"):
        run_predict(cfg)


def test_vote_members_and_clips_without_usable_features():
    p = np.zeros((2, 3, 6))
    p[0, 0] = [0.1, 0.6, 0.1, 0.1, 0.05, 0.05]
    p[1, 0] = [0.1, 0.5, 0.2, 0.1, 0.05, 0.05]
    p[0, 1] = [0.7, 0.1, 0.1, 0.05, 0.025, 0.025]
    p[1, 1] = [0.1, 0.2, 0.6, 0.05, 0.025, 0.025]  # a tie of one vote each: the higher mean probability
    p[:, 2] = [0.3, 0.1, 0.2, 0.2, 0.1, 0.1]  # no usable branch: every member's blank-input output
    classes, mean = vote_members(p)
    assert list(classes) == [1, 0, 0]
    np.testing.assert_allclose(mean, p.mean(axis=0))
    table = predictions_table(
        ["a", "b", "c"],
        classes,
        mean,
        pd.Series({"c": "audio: open FileNotFoundError"}),
        pd.DataFrame({"name": ["d"], "error": ["video file not found"]}),
    )
    assert list(table["discrete"][:3]) == ["angry", "neutral", "neutral"] and pd.isna(
        table.loc[3, "discrete"]
    )
    assert table.loc[2, "error"] == "no usable features: audio: open FileNotFoundError"
    assert table["error"][:2].isna().all() and table.loc[3, "error"] == "video file not found"
