"""The feature store contract between extraction and training.

``${run_dir}/features/<branch>/`` holds Parquet files with one row per ``video_id``:

==============  =========================================  =========================================
column          type                                       meaning
==============  =========================================  =========================================
video_id        string                                     the manifest's id
feature         fixed_size_list<float32>[dim]              the pooled vector
model           string                                     the model reference that produced it
layers          string                                     hidden layers used ("" where not relevant)
n_frames        int32                                      frames (or audio windows / tokens) pooled
face_ratio      float32                                    frames with a face / frames (face branch)
source          string                                     face: openface | detect; audio: wav | video
dtype           string                                     compute dtype (fp32 / fp16 / bf16)
==============  =========================================  =========================================

``${run_dir}/features/errors.parquet`` holds one row per (video_id, branch) that failed:
video_id, branch, stage, error_type, message.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ecmf_ray import storage

BRANCHES: tuple[str, ...] = ("frame", "face", "audio", "text")
FEATURE_COLUMN = "feature"


def features_dir(run_dir: str) -> str:
    return storage.join(run_dir, "features")


def branch_dir(run_dir: str, branch: str) -> str:
    return storage.join(run_dir, "features", branch)


def errors_path(run_dir: str) -> str:
    return storage.join(run_dir, "features", "errors.parquet")


def feature_matrix(table: pa.Table) -> np.ndarray:
    """The ``feature`` column as a (rows, dim) float32 array, without a Python loop."""
    column = table.column(FEATURE_COLUMN).combine_chunks()
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    dim = column.type.list_size if pa.types.is_fixed_size_list(column.type) else len(column[0].as_py())
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def load_branch(run_dir: str, branch: str) -> tuple[list[str], np.ndarray]:
    """All ``(video_ids, features)`` written for one branch."""
    table = storage.read_table(branch_dir(run_dir, branch))
    return table.column("video_id").to_pylist(), feature_matrix(table)


ERROR_COLUMNS: tuple[str, ...] = ("video_id", "branch", "stage", "error_type", "message")
ERRORS_SCHEMA = pa.schema([(name, pa.string()) for name in ERROR_COLUMNS])


def feature_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("video_id", pa.string()),
            (FEATURE_COLUMN, pa.list_(pa.float32(), dim)),
            ("model", pa.string()),
            ("layers", pa.string()),
            ("n_frames", pa.int32()),
            ("face_ratio", pa.float32()),
            ("dtype", pa.string()),
            ("source", pa.string()),
        ]
    )


def feature_table(
    video_ids: list[str],
    matrix: np.ndarray,
    *,
    model: str,
    layers: str,
    dtype: str,
    n_frames: np.ndarray,
    face_ratio: np.ndarray | None = None,
    source: list[str] | None = None,
) -> pa.Table:
    """One branch's rows in the contract's schema; ``face_ratio`` (non-face branches) and ``source``
    (frame and text) are null where not given."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, dim = matrix.shape
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), dim)
    ratio = pa.nulls(n, pa.float32()) if face_ratio is None else pa.array(face_ratio, pa.float32())
    columns = [
        pa.array(video_ids, pa.string()),
        vectors,
        pa.array([model] * n, pa.string()),
        pa.array([layers] * n, pa.string()),
        pa.array(n_frames, pa.int32()),
        ratio,
        pa.array([dtype] * n, pa.string()),
        pa.nulls(n, pa.string()) if source is None else pa.array(source, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=feature_schema(dim))


def errors_table(records: list[dict[str, str]]) -> pa.Table:
    """``errors.parquet`` rows from dicts with the keys of ``ERROR_COLUMNS``."""
    return pa.Table.from_pylist([{k: r[k] for k in ERROR_COLUMNS} for r in records], schema=ERRORS_SCHEMA)
