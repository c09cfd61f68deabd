"""The journal and consolidation rules of the feature store, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ecmf_ray.extract import store
from ecmf_ray.extract.rows import error_column, feature_column


def shard_batch(ids: list[str], failed: set[str]) -> dict[str, np.ndarray]:
    n = len(ids)
    return {
        "video_id": np.array(ids, dtype=object),
        feature_column("audio"): np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        error_column("audio"): np.array(
            ['{"stage": "open"}' if v in failed else "" for v in ids], dtype=object
        ),
        "audio_n": np.ones(n, dtype=np.int32),
    }


def test_a_shard_written_after_the_index_is_read_from_the_shard(tmp_path):
    run_dir = str(tmp_path)
    first = store.write_shard(shard_batch(["a", "b"], {"b"}), run_dir, ["audio"])
    store.write_journal(run_dir, first)
    store.write_shard(
        shard_batch(["c"], set()), run_dir, ["audio"]
    )  # the driver was killed before indexing it
    (tmp_path / "features" / "_shards" / "x.parquet.tmp-dead").write_bytes(b"PAR1 half")
    journal = store.read_journal(run_dir)
    assert list(journal["video_id"]) == ["a", "b", "c"] and list(journal["errored"]) == [False, True, False]
    assert store.completed_ids(journal) == {"a", "b", "c"}
    assert store.completed_ids(journal, retry_errors=True) == {"a", "c"}
    assert not list((tmp_path / "features" / "_shards").glob("*.tmp-*"))


def test_a_branch_keeps_its_first_success_else_its_latest_error():
    # written in this order: v1 ok then retried ok again; v2 error then ok; v3 error twice.
    table = pa.table({"video_id": ["v1", "v2", "v3", "v1", "v2", "v3"], "attempt": [0, 0, 0, 1, 1, 1]})
    ok = np.array([True, False, False, True, True, False])
    chosen = store._chosen_rows(table, ["v3", "v2", "v1", "v4"], ok)
    assert chosen.column("video_id").to_pylist() == ["v3", "v2", "v1"]  # manifest order, each once
    assert chosen.column("attempt").to_pylist() == [1, 1, 0]


def test_the_index_holds_only_ids():
    rows = store.journal_rows(pa.table({"video_id": ["a"], error_column("text"): [""]}), "s.parquet")
    assert list(rows.columns) == store.JOURNAL_COLUMNS
    assert rows.to_dict("records") == [{"video_id": "a", "shard": "s.parquet", "errored": False}]
