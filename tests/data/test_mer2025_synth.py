"""`ecmf synth` then `ecmf prepare`: a correct manifest from the synthesised MER2025 layout."""

from pathlib import Path

import pandas as pd

from ecmf_ray.cli import main
from ecmf_ray.data.manifest import read_manifest


def test_synth_then_prepare(tmp_path: Path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert (
        main(["synth", str(data), "--n", "12", "--unlabeled", "4", "--label-noise", "0.25", "--seed", "3"])
        == 0
    )
    # One bad labelled row on top of the synthetic release: a clip that does not exist.
    labels = data / "track1_train_disdim.csv"
    labels.write_text(labels.read_text() + "ghost,happy,1.0\n")

    assert main(["prepare", f"run_dir={run}", f"dataset.root={data}"]) == 0
    out = capsys.readouterr().out
    assert "manifest: 16 videos" in out
    # The plain synthetic layout lists every unlabelled clip as a candidate.
    assert "candidates: 4 in track_all_candidates.csv (test)" in out
    assert "clips per split: train 12, test 4, unlabeled 0; left out: 0" in out

    manifest = read_manifest(str(run / "manifest.parquet"))
    truth = pd.read_csv(data / "truth.csv").set_index("name")
    assert len(manifest) == 16 and manifest["video_id"].is_unique
    assert (manifest["split"] == "train").sum() == 12 and (manifest["split"] == "test").sum() == 4
    train = manifest[manifest["split"] == "train"].set_index("video_id")
    assert (train["label"] == truth.loc[train.index, "given_label"]).all()
    assert manifest["video_path"].map(lambda p: Path(p).is_file()).all()
    assert (manifest["text"].str.len() > 0).all()
    assert (run / "config" / "prepare.yaml").is_file()

    issues = pd.read_csv(run / "prepare_issues.csv")
    assert issues["name"].tolist() == ["ghost"]
