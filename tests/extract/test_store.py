"""The journal and consolidation rules of the feature store, without Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ecmf_ray.extract import journal, store
from ecmf_ray.extract.rows import error_column, feature_column, source_column


def shard_batch(ids: list[str], failed: set[str]) -> dict[str, np.ndarray]:
    n = len(ids)
    return {
        "video_id": np.array(ids, dtype=object),
        feature_column("audio"): np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        error_column("audio"): np.array(
            ['{"stage": "open"}' if v in failed else "" for v in ids], dtype=object
        ),
        "audio_n": np.ones(n, dtype=np.int32),
        source_column("audio"): np.array(["" if v in failed else "video" for v in ids], dtype=object),
    }


AUDIO = {"audio": "d1"}  # the branch a shard holds -> the digest of the spec it was extracted with


def test_a_shard_written_after_the_index_is_read_from_the_shard(tmp_path):
    run_dir = str(tmp_path)
    first = journal.write_shard(shard_batch(["a", "b"], {"b"}), run_dir, AUDIO)
    journal.write_journal(run_dir, first)
    journal.write_shard(shard_batch(["c"], set()), run_dir, AUDIO)  # the driver was killed before indexing it
    (tmp_path / "features" / "_shards" / "x.parquet.tmp-dead").write_bytes(b"PAR1 half")
    rows = journal.read_journal(run_dir)
    assert list(rows["video_id"]) == ["a", "b", "c"] and list(rows["errored"]) == [False, True, False]
    assert set(rows["specs"]) == {"audio=d1"}
    assert journal.completed_ids(rows, "audio", "d1") == {"a", "b", "c"}
    assert journal.completed_ids(rows, "audio", "d1", retry_errors=True) == {"a", "c"}
    assert not list((tmp_path / "features" / "_shards").glob("*.tmp-*"))


def test_a_branch_is_done_only_under_the_spec_it_was_extracted_with(tmp_path):
    """Rows written under another audio spec do not count for the current one; the other branches' do."""
    run_dir = str(tmp_path)
    both = {"audio": "old", "text": "t1"}
    batch = shard_batch(["a", "b"], set()) | {
        feature_column("text"): np.zeros((2, 3), np.float32),
        error_column("text"): np.array(["", ""], dtype=object),
        "text_n": np.ones(2, dtype=np.int32),
    }
    journal.write_journal(run_dir, journal.write_shard(batch, run_dir, both))
    rows = journal.read_journal(run_dir)
    ids = rows["video_id"]
    need = store.missing_branches(rows, ids, {"audio": "new", "text": "t1"}, retry_errors=False)
    assert need.to_dict() == {"a": ("audio",), "b": ("audio",)}
    again = journal.write_shard(shard_batch(["a", "b"], set()), run_dir, {"audio": "new"})
    rows = pd.concat([rows, again], ignore_index=True)
    assert not store.missing_branches(rows, ids, {"audio": "new", "text": "t1"}, False).map(len).any()
    # Going back to the old audio spec needs nothing either: its rows are still in the journal.
    assert not store.missing_branches(rows, ids, {"audio": "old", "text": "t1"}, False).map(len).any()


def test_a_branch_keeps_its_first_success_else_its_latest_error():
    # written in this order: v1 ok then retried ok again; v2 error then ok; v3 error twice.
    table = pa.table({"video_id": ["v1", "v2", "v3", "v1", "v2", "v3"], "attempt": [0, 0, 0, 1, 1, 1]})
    ok = np.array([True, False, False, True, True, False])
    chosen = store._chosen_rows(table, ["v3", "v2", "v1", "v4"], ok)
    assert chosen.column("video_id").to_pylist() == ["v3", "v2", "v1"]  # manifest order, each once
    assert chosen.column("attempt").to_pylist() == [1, 1, 0]


def test_the_index_holds_only_ids():
    table = pa.table({"video_id": ["a"], "specs": ["text=t1"], error_column("text"): [""]})
    rows = journal.journal_rows(table, "s.parquet")
    assert list(rows.columns) == journal.JOURNAL_COLUMNS
    assert rows.to_dict("records") == [
        {"video_id": "a", "shard": "s.parquet", "errored": False, "specs": "text=t1"}
    ]
