"""The submission covers the candidates exactly: every test video once, nothing else."""

import pandas as pd
import pytest

from ecmf_ray.finalize.ensemble import submission


def ensemble_test(ids: list[str], split: str = "test") -> pd.DataFrame:
    return pd.DataFrame({"video_id": ids, "split": split, "predicted": "happy"})


def test_one_row_per_candidate_and_unlabeled_rows_left_out() -> None:
    test = pd.concat([ensemble_test(["c1", "c2", "c3"]), ensemble_test(["x1"], "unlabeled")])
    sub = submission(test, ["c3", "c1", "c2"])
    assert sub.columns.tolist() == ["name", "discrete"] and sorted(sub["name"]) == ["c1", "c2", "c3"]


def test_a_missing_or_foreign_candidate_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"3 candidates exactly: 1 missing \(e.g. \['c3'\]\), 0 not"):
        submission(ensemble_test(["c1", "c2"]), ["c1", "c2", "c3"])
    with pytest.raises(ValueError, match=r"1 not candidates \(e.g. \['z'\]\)"):
        submission(ensemble_test(["c1", "z"]), ["c1"])


def test_a_test_video_without_prediction_is_an_error() -> None:
    test = ensemble_test(["c1", "c2"]).astype({"predicted": object})
    test.loc[1, "predicted"] = None
    with pytest.raises(ValueError, match=r"1 test video\(s\) have no prediction, e.g. \['c2'\]"):
        submission(test, ["c1", "c2"])
    with pytest.raises(ValueError, match="twice"):
        submission(ensemble_test(["c1", "c1"]))
