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
