"""The real release's split rule: test is exactly track_all_candidates.csv; extras only when asked for."""

from pathlib import Path

import pandas as pd
import pytest

from ecmf_ray.cli import main
from ecmf_ray.data.manifest import ManifestError, read_manifest
from ecmf_ray.data.mer2025 import import_mer2025, parse_unlabeled, sample_extras

LABELS = "name,discrete,valence\nl1,happy,2.0\nl2,sad,-1.5\nl3,angry,-2\n"
SUBTITLES = "name,chinese,english\nl1,开心,happy\nc1,你好,hello\nc9,没有视频,no video\n"
CANDIDATES = ["c1", "c2", "c3", "c9"]  # c9 has no video
EXTRAS = [f"x{i}" for i in range(1, 7)]


def make_release(root: Path, candidates: str | None) -> Path:
    (root / "video").mkdir(parents=True)
    for name in ["l1", "l2", "l3", "c1", "c2", "c3", *EXTRAS]:
        (root / "video" / f"{name}.mp4").write_bytes(b"not decoded by prepare")
    (root / "track1_train_disdim.csv").write_text(LABELS, encoding="utf-8")
    (root / "subtitle_chieng.csv").write_text(SUBTITLES, encoding="utf-8")
    if candidates is not None:
        (root / "track_all_candidates.csv").write_text(candidates, encoding="utf-8")
    return root


def split_of(result) -> dict[str, list[str]]:
    m = result.manifest
    return {s: sorted(m.loc[m["split"] == s, "video_id"]) for s in ("train", "test", "unlabeled")}


def test_test_is_exactly_the_candidates_and_extras_are_left_out(tmp_path: Path) -> None:
    root = make_release(tmp_path, "name\n" + "\n".join(CANDIDATES) + "\n")
    result = import_mer2025(str(root))
    assert split_of(result) == {"train": ["l1", "l2", "l3"], "test": CANDIDATES, "unlabeled": []}
    assert result.counts == {
        "labelled": 3,
        "candidates": 4,
        "candidates_labelled": 0,
        "candidates_missing_video": 1,
        "extra_clips": 6,
        "extra_included": 0,
        "left_out": 6,
    }
    # The candidate without a video stays (it must be in the submission), with its text and an issue.
    c9 = result.manifest.set_index("video_id").loc["c9"]
    assert c9["text"] == "没有视频" and c9["video_path"].endswith("video/c9.mp4")
    (issue,) = result.issues
    assert issue["name"] == "c9" and issue["source"] == "track_all_candidates.csv"
    assert "not found" in issue["problem"] and "kept in test" in issue["problem"]


def test_unlabeled_all_and_a_seeded_sample(tmp_path: Path) -> None:
    root = make_release(tmp_path, "name\n" + "\n".join(CANDIDATES) + "\n")
    everything = import_mer2025(str(root), unlabeled="all")
    assert split_of(everything)["unlabeled"] == EXTRAS and everything.counts["extra_included"] == 6
    three = import_mer2025(str(root), unlabeled=3, seed=7)
    picked = split_of(three)["unlabeled"]
    assert len(picked) == 3 and set(picked) <= set(EXTRAS) and split_of(three)["test"] == CANDIDATES
    assert split_of(import_mer2025(str(root), unlabeled="3", seed=7))["unlabeled"] == picked
    assert {tuple(sample_extras(EXTRAS, 3, s)) for s in range(10)} != {tuple(picked)}  # the seed matters
    assert split_of(import_mer2025(str(root), unlabeled=100))["unlabeled"] == EXTRAS


@pytest.mark.parametrize("value", ["some", -1, 2.5, True])
def test_bad_unlabeled_setting_is_an_error(value: object) -> None:
    with pytest.raises(ManifestError, match="dataset.unlabeled"):
        parse_unlabeled(value)


def test_labelled_candidate_stays_in_train_and_repeats_are_listed_once(tmp_path: Path) -> None:
    root = make_release(tmp_path, "name,batch\nc1,1\nl2,1\nc1,2\n,2\nc2,2\n")
    result = import_mer2025(str(root))
    assert split_of(result) == {"train": ["l1", "l2", "l3"], "test": ["c1", "c2"], "unlabeled": []}
    assert result.counts["candidates"] == 3 and result.counts["candidates_labelled"] == 1
    problems = {(i["name"], i["problem"].split(";")[0]) for i in result.issues}
    assert problems == {
        ("l2", "a labelled clip is also a candidate"),
        ("c1", "duplicate candidate"),
        ("", "empty name in data row 4"),
    }


def test_a_missing_candidates_file_is_an_error_naming_its_path(tmp_path: Path, capsys) -> None:
    """A typo must not turn every unlabelled clip (~125k in the release) into test."""
    root = make_release(tmp_path / "data", None)
    expected = str(root / "track_all_candidates.csv")
    with pytest.raises(ManifestError, match="dataset.candidates_file=track_all_candidates.csv") as err:
        import_mer2025(str(root))
    assert expected in str(err.value) and "dataset.candidates_file=null" in str(err.value)
    with pytest.raises(ManifestError, match=r"dataset.candidates_file=cands\.csv: file not found"):
        import_mer2025(str(make_release(tmp_path / "other", "name\nc1\n")), candidates_file="cands.csv")
    run = tmp_path / "run"
    assert main(["prepare", f"run_dir={run}", f"dataset.root={root}"]) == 2
    assert expected in capsys.readouterr().err and not (run / "manifest.parquet").exists()


def test_candidates_file_null_makes_every_unlabelled_clip_test(tmp_path: Path, capsys) -> None:
    root = make_release(tmp_path / "data", None)
    result = import_mer2025(str(root), candidates_file=None, unlabeled="all")
    assert (
        split_of(result)["test"] == sorted(["c1", "c2", "c3", *EXTRAS]) and "candidates" not in result.counts
    )
    assert result.counts == {"labelled": 3, "left_out": 0}
    assert (
        main(
            ["prepare", f"run_dir={tmp_path / 'run'}", f"dataset.root={root}", "dataset.candidates_file=null"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dataset.candidates_file=null: every unlabelled clip is a test candidate" in out
    assert "clips per split: train 3, test 9, unlabeled 0; left out: 0" in out


def test_a_missing_subtitles_file_is_an_error_naming_its_path(tmp_path: Path, capsys) -> None:
    root = make_release(tmp_path / "data", "name\n" + "\n".join(CANDIDATES) + "\n")
    (root / "subtitle_chieng.csv").unlink()
    with pytest.raises(
        ManifestError, match="dataset.subtitles_file=subtitle_chieng.csv: file not found"
    ) as err:
        import_mer2025(str(root))
    assert str(root / "subtitle_chieng.csv") in str(err.value)
    assert main(["prepare", f"run_dir={tmp_path / 'run'}", f"dataset.root={root}"]) == 2
    assert str(root / "subtitle_chieng.csv") in capsys.readouterr().err


def test_a_clip_without_a_subtitle_row_has_empty_text_and_no_issue(tmp_path: Path) -> None:
    root = make_release(tmp_path, "name\n" + "\n".join(CANDIDATES) + "\n")
    texts = import_mer2025(str(root)).manifest.set_index("video_id")["text"]
    assert texts["l1"] == "开心" and texts["c1"] == "你好" and texts["l2"] == texts["c2"] == ""


def test_candidates_file_without_name_column(tmp_path: Path) -> None:
    root = make_release(tmp_path, "video\nc1\n")
    with pytest.raises(ManifestError, match=r"track_all_candidates\.csv: missing column\(s\) name"):
        import_mer2025(str(root))


def test_prepare_prints_where_the_rows_came_from(tmp_path: Path, capsys) -> None:
    root = make_release(tmp_path / "data", "name\n" + "\n".join(CANDIDATES) + "\n")
    run = tmp_path / "run"
    assert main(["prepare", f"run_dir={run}", f"dataset.root={root}", "dataset.unlabeled=2"]) == 0
    out = capsys.readouterr().out
    assert "manifest: 9 videos" in out
    assert "labelled: 3 in track1_train_disdim.csv (train)" in out
    assert "candidates: 4 in track_all_candidates.csv (test); 1 without a video" in out
    assert "extra unlabelled clips: 6; 2 included as unlabeled, 4 left out (dataset.unlabeled=2)" in out
    assert (
        "clips per split: train 3, test 4, unlabeled 2; left out: 4 (clips under video/ not in the manifest)"
        in out
    )
    manifest = read_manifest(str(run / "manifest.parquet"))
    assert manifest["split"].value_counts().to_dict() == {"test": 4, "train": 3, "unlabeled": 2}
    issues = pd.read_csv(run / "prepare_issues.csv")
    assert issues["name"].tolist() == ["c9"]
