"""Manifest import and validation: the MER2025 layout, CSV manifests, and every bad case."""

from pathlib import Path

import pandas as pd
import pytest

from ecmf_ray.cli import main
from ecmf_ray.config import load_config
from ecmf_ray.data.manifest import ManifestError, read_manifest
from ecmf_ray.data.mer2025 import import_manifest, import_mer2025
from ecmf_ray.data.prepare import run_prepare


def make_release(root: Path, labels: str, subtitles: str | bytes, videos: list[str]) -> Path:
    """The release's files; every unlabelled clip is listed as a candidate."""
    (root / "video").mkdir(parents=True)
    for name in videos:
        (root / "video" / name).write_bytes(b"not decoded by prepare")
    (root / "track1_train_disdim.csv").write_text(labels, encoding="utf-8")
    data = subtitles if isinstance(subtitles, bytes) else subtitles.encode("utf-8")
    (root / "subtitle_chieng.csv").write_bytes(data)
    labelled = {line.split(",")[0] for line in labels.splitlines()[1:]}
    clips = [Path(v).stem for v in videos if Path(v).suffix in (".mp4", ".avi")]
    candidates = [c for c in clips if c not in labelled]
    (root / "track_all_candidates.csv").write_text("name\n" + "".join(f"{c}\n" for c in candidates))
    return root


LABELS = "name,discrete,valence\na,happy,2.0\nb,sad,-1.5\nc,Angry,-2\n"
SUBTITLES = "name,chinese,english\na,我很开心,I am happy\nb,好难过,so sad\nc,气死了,furious\nd,你好,hello\n"


def test_clean_release(tmp_path: Path):
    root = make_release(tmp_path, LABELS, SUBTITLES, ["a.mp4", "b.mp4", "c.avi", "d.mp4", "notes.txt"])
    result = import_mer2025(str(root))
    m = result.manifest.set_index("video_id")
    assert result.issues == []
    assert list(m.index) == ["a", "b", "c", "d"]
    assert m.loc["c", "label"] == "angry" and m.loc["c", "video_path"].endswith("c.avi")
    assert m.loc["d", "split"] == "test" and pd.isna(m.loc["d", "label"])
    assert m.loc["a", "text"] == "我很开心" and m.loc["b", "valence"] == -1.5
    assert set(m.loc[["a", "b", "c"], "split"]) == {"train"}


def test_label_outside_the_six_classes_is_kept_unlabeled(tmp_path: Path):
    root = make_release(tmp_path, LABELS + "e,disgust,0\n", SUBTITLES, ["a.mp4", "b.mp4", "c.mp4", "e.mp4"])
    result = import_mer2025(str(root))
    m = result.manifest.set_index("video_id")
    assert pd.isna(m.loc["e", "label"]) and m.loc["e", "split"] == "unlabeled"
    (issue,) = result.issues
    assert issue["name"] == "e" and "disgust" in issue["problem"]


def test_duplicate_name_keeps_the_first(tmp_path: Path):
    root = make_release(tmp_path, LABELS + "a,sad,-1\n", SUBTITLES, ["a.mp4", "b.mp4", "c.mp4"])
    result = import_mer2025(str(root))
    assert result.manifest["video_id"].tolist() == ["a", "b", "c"]
    assert result.manifest.set_index("video_id").loc["a", "label"] == "happy"
    (issue,) = result.issues
    assert issue["name"] == "a" and "duplicate" in issue["problem"]


def test_labelled_name_without_video_is_reported(tmp_path: Path):
    root = make_release(tmp_path, LABELS, SUBTITLES, ["a.mp4", "c.mp4"])
    result = import_mer2025(str(root))
    assert result.manifest["video_id"].tolist() == ["a", "c"]
    (issue,) = result.issues
    assert issue["name"] == "b" and "not found" in issue["problem"]


def test_video_without_subtitle_gets_empty_text(tmp_path: Path):
    root = make_release(tmp_path, LABELS, "name,chinese,english\na,开心,happy\n", ["a.mp4", "b.mp4", "c.mp4"])
    result = import_mer2025(str(root))
    assert result.issues == []
    assert result.manifest.set_index("video_id")["text"].to_dict() == {"a": "开心", "b": "", "c": ""}


def test_subtitles_not_in_utf8(tmp_path: Path):
    root = make_release(tmp_path, LABELS, SUBTITLES.encode("gbk"), ["a.mp4", "b.mp4", "c.mp4"])
    result = import_mer2025(str(root))
    assert result.manifest.set_index("video_id").loc["a", "text"] == "我很开心"
    (issue,) = result.issues
    assert "not UTF-8" in issue["problem"] and issue["source"] == "subtitle_chieng.csv"

    (root / "subtitle_chieng.csv").write_bytes(b"name,chinese,english\na,\xff\xff,x\n")
    with pytest.raises(ManifestError, match=r"subtitle_chieng\.csv.*not UTF-8"):
        import_mer2025(str(root))


def test_missing_column_is_a_clear_error(tmp_path: Path, capsys):
    root = make_release(tmp_path, "name,valence\na,1.0\n", SUBTITLES, ["a.mp4"])
    with pytest.raises(ManifestError, match=r"track1_train_disdim\.csv: missing column\(s\) discrete"):
        import_mer2025(str(root))
    code = main(["prepare", f"run_dir={tmp_path / 'run'}", f"dataset.root={root}"])
    assert code == 2 and "missing column(s) discrete" in capsys.readouterr().err


def test_csv_manifest_resolves_relative_paths(tmp_path: Path):
    (tmp_path / "clips").mkdir()
    for name in ("x", "y", "z"):
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(b"0")
    pd.DataFrame(
        {
            "video_id": ["x", "y", "z", "w"],
            "video_path": ["clips/x.mp4", "clips/y.mp4", str(tmp_path / "clips" / "z.mp4"), "clips/w.mp4"],
            "label": ["happy", "", "worried", "sad"],
            "text": ["t1", "t2", None, "t4"],
        }
    ).to_csv(tmp_path / "manifest.csv", index=False)
    result = import_manifest(str(tmp_path / "manifest.csv"))
    m = result.manifest.set_index("video_id")
    assert m.loc["x", "video_path"] == str(tmp_path / "clips" / "x.mp4")
    assert m.loc["y", "split"] == "test" and m.loc["z", "split"] == "train" and m.loc["z", "text"] == ""
    assert [i["name"] for i in result.issues] == ["w"] and result.counts == {"left_out": 1}


def test_prepare_job_writes_manifest_and_issues(tmp_path: Path):
    root = make_release(tmp_path / "data", LABELS + "e,bored,0\n", SUBTITLES, ["a.mp4", "c.mp4", "e.mp4"])
    run_dir = tmp_path / "run"
    cfg = load_config([], [f"run_dir={run_dir}", f"dataset.root={root}"])
    summary = run_prepare(cfg)
    manifest = read_manifest(str(run_dir / "manifest.parquet"))
    assert summary["videos"] == len(manifest) == 3
    issues = pd.read_csv(run_dir / "prepare_issues.csv")
    assert sorted(issues["name"]) == ["b", "e"]
    assert list(issues.columns) == ["name", "problem", "source"]
