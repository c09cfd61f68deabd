"""The exactly-once rule: which videos a run has written, and what a rerun skips.

The pipeline's last stage writes on the workers: each batch of up to ``extract.write.videos_per_file``
finished videos becomes one shard under ``features/_shards/`` (the branches of that pass and their errors
together), written atomically, so a killed run leaves only whole shards. A shard's name hashes its ids
and the specs it was extracted with, so a retried write task overwrites its own shard. The driver sees
only each shard's journal rows and keeps the journal, ``features/_shards.index.parquet`` (``video_id,
shard, errored, specs``, in write order). ``specs`` names the branches the shard holds, each with the
digest of the feature spec it was extracted with (``audio=1a2b…;frame=…``), so a changed branch spec
leaves that branch's earlier rows out of what counts as done, and keeps every other branch's.

A rerun reads that one index, plus any shard written after its last update (a kill between the two), and
extracts, per branch, the videos no row holds under the branch's current spec; with
``extract.retry_errors`` the videos that errored are processed again.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from ecmf_ray import features, storage
from ecmf_ray.extract.rows import SOURCED_BRANCHES, count_column, error_column, feature_column, source_column

SHARDS = "_shards"
FACE_RATIO = "face_ratio"
SPECS = "specs"
JOURNAL_COLUMNS = ["video_id", "shard", "errored", SPECS]


def shards_dir(run_dir: str) -> str:
    return storage.join(features.features_dir(run_dir), SHARDS)


def index_path(run_dir: str) -> str:
    return storage.join(features.features_dir(run_dir), f"{SHARDS}.index.parquet")


def specs_key(digests: dict[str, str]) -> str:
    """``branch=digest`` pairs, sorted by branch: what a shard holds and the spec it was made with."""
    return ";".join(f"{b}={digests[b]}" for b in sorted(digests))


def shard_table(batch: dict[str, np.ndarray], digests: dict[str, str]) -> pa.Table:
    """One finished batch: ``video_id``, ``specs`` and, per branch, its vector, error cell and count."""
    n = len(batch["video_id"])
    columns: dict[str, pa.Array] = {
        "video_id": pa.array(batch["video_id"].tolist(), pa.string()),
        SPECS: pa.array([specs_key(digests)] * n, pa.string()),
    }
    for branch in digests:
        matrix = np.ascontiguousarray(batch[feature_column(branch)], dtype=np.float32)
        columns[feature_column(branch)] = pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1]
        )
        columns[error_column(branch)] = pa.array(batch[error_column(branch)].tolist(), pa.string())
        columns[count_column(branch)] = pa.array(batch[count_column(branch)], pa.int32())
        if branch in SOURCED_BRANCHES:
            columns[source_column(branch)] = pa.array(batch[source_column(branch)].tolist(), pa.string())
    if "face" in digests:
        columns[FACE_RATIO] = pa.array(batch[FACE_RATIO], pa.float32())
    return pa.table(columns)


def write_shard(batch: dict[str, np.ndarray], run_dir: str, digests: dict[str, str]) -> pd.DataFrame:
    """Write a batch of the branches in ``digests`` (branch -> spec digest) atomically and return its
    journal rows.

    The pipeline's write stage (a Ray Data task on a worker): the vectors go to storage and only these
    rows go on to the driver. The name hashes the ids and specs, so writing a batch twice (a retried
    task) overwrites.
    """
    ids = sorted(batch["video_id"].tolist())
    name = hashlib.sha1("\n".join([specs_key(digests), *ids]).encode()).hexdigest()[:20] + ".parquet"
    table = shard_table(batch, digests)
    storage.write_table(table, storage.join(shards_dir(run_dir), name))
    return journal_rows(table, name)


def journal_rows(table: pa.Table, shard: str) -> pd.DataFrame:
    """``video_id, shard, errored, specs`` of a shard's rows; errored: any branch's error cell is set."""
    present = [c for c in map(error_column, features.BRANCHES) if c in table.column_names]
    cells = [table.column(c).to_numpy(zero_copy_only=False) for c in present]
    failed = (
        np.logical_or.reduce([c.astype(str) != "" for c in cells]) if cells else np.zeros(len(table), bool)
    )
    specs = table.column(SPECS).to_pylist() if SPECS in table.column_names else ""
    return pd.DataFrame(
        {"video_id": table.column("video_id").to_pylist(), "shard": shard, "errored": failed, SPECS: specs}
    )


def shard_names(run_dir: str) -> list[str]:
    """Complete shards; temporary files a killed writer left behind are removed."""
    folder = shards_dir(run_dir)
    names = storage.listdir(folder)
    for name in names:
        if ".tmp-" in name:
            storage.remove(storage.join(folder, name))
    return sorted(n for n in names if n.endswith(".parquet"))


def read_shards(run_dir: str, names: list[str], columns: list[str] | None = None) -> pa.Table:
    """The rows of the named shards, in that order."""
    if not names:
        return pa.table({"video_id": pa.array([], pa.string())})
    files = [storage.join(shards_dir(run_dir), n) for n in names]
    fs, _ = storage.pyarrow_fs(files[0])
    dataset = pads.dataset([storage.pyarrow_fs(f)[1] for f in files], filesystem=fs, format="parquet")
    wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=wanted)


def read_journal(run_dir: str) -> pd.DataFrame:
    """Every video row written so far (``video_id, shard, errored, specs``), in write order.

    The index, for the shards it names that exist; then the rows of any shard it does not name yet (one
    written just before a kill), read from the shard itself.
    """
    names = shard_names(run_dir)
    index = pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in zip(JOURNAL_COLUMNS, (str, str, bool, str), strict=True)}
    )
    if storage.exists(index_path(run_dir)):
        index = storage.read_table(index_path(run_dir)).to_pandas()
        index = index[index["shard"].isin(names)]
    frames = [index]
    wanted = ["video_id", SPECS, *(error_column(b) for b in features.BRANCHES)]
    for name in sorted(set(names) - set(index["shard"])):
        frames.append(journal_rows(read_shards(run_dir, [name], wanted), name))
    return pd.concat(frames, ignore_index=True)


def write_journal(run_dir: str, journal: pd.DataFrame) -> None:
    storage.write_table(
        pa.Table.from_pandas(journal[JOURNAL_COLUMNS], preserve_index=False), index_path(run_dir)
    )


def branch_rows(journal: pd.DataFrame, branch: str, digest: str) -> pd.DataFrame:
    """The journal rows whose shard holds ``branch`` extracted with the spec of that ``digest``."""
    pair = f"{branch}={digest}"
    return journal[journal[SPECS].map(lambda key: pair in str(key).split(";")).astype(bool)]


def completed_ids(journal: pd.DataFrame, branch: str, digest: str, retry_errors: bool = False) -> set[str]:
    """Videos a run need not extract again for ``branch`` under the spec of ``digest``: every one
    written, or with ``retry_errors`` those written without an error at least once."""
    rows = branch_rows(journal, branch, digest)
    if retry_errors:
        rows = rows[~rows["errored"]]
    return set(rows["video_id"])
