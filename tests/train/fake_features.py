"""Training test helpers: a run folder with synthetic features in the feature-store format
(ecmf_ray.features), and the small config the training tests use.

Each class has a mean vector per branch. Per video, each branch is informative (its class mean plus
noise) with probability ``p_informative`` and pure noise otherwise, so any single branch is right
only part of the time while the branches together nearly always carry the class: fusion must beat
every unimodal model. A few (video, branch) pairs are missing and listed in errors.parquet, as a
failed extraction would leave them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.config import load_config
from ecmf_ray.data.manifest import manifest_path, write_manifest
from ecmf_ray.features import branch_dir, errors_path
from ecmf_ray.labels import EMOTIONS

DIMS = {"frame": 48, "face": 48, "audio": 64, "text": 64}
# A small, quick training config with enough epochs for fusion to separate from single branches.
SMALL = [
    "train.folds=3",
    "train.max_epochs=24",
    "train.early_stopping_patience=12",
    "train.lr=3e-3",
    "train.checkpoint_every=2",
    "train.checkpoint_interval_s=0",  # a checkpoint at every report: these folds last seconds
    "model.hidden=32",
    "model.ffn_mult=2",
    "model.dropout=0.2",
]


def small_config(run_dir: str, *overrides: str) -> DictConfig:
    return load_config(["local"], [f"run_dir={run_dir}", *SMALL, *overrides])


def feature_table(ids: list[str], matrix: np.ndarray, model: str) -> pa.Table:
    dim = matrix.shape[1]
    flat = pa.array(matrix.astype(np.float32).ravel(), type=pa.float32())
    return pa.table(
        {
            "video_id": pa.array(ids, pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(flat, dim),
            "model": pa.array([model] * len(ids), pa.string()),
            "layers": pa.array([""] * len(ids), pa.string()),
            "n_frames": pa.array([8] * len(ids), pa.int32()),
            "face_ratio": pa.array([1.0] * len(ids), pa.float32()),
            "dtype": pa.array(["fp32"] * len(ids), pa.string()),
        }
    )


def write_fake_run(
    run_dir: str,
    n_train: int = 180,
    n_test: int = 30,
    dims: dict[str, int] | None = None,
    p_informative: float = 0.5,
    separation: float = 2.5,
    missing: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    """Write ``manifest.parquet`` and ``features/<branch>/part-0.parquet``; return the manifest."""
    dims = dims or DIMS
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    classes = np.arange(n) % len(EMOTIONS)
    rng.shuffle(classes)
    ids = [f"vid_{i:05d}" for i in range(n)]
    split = ["train"] * n_train + ["test"] * (n_test // 2) + ["unlabeled"] * (n_test - n_test // 2)
    manifest = pd.DataFrame(
        {
            "video_id": ids,
            "video_path": [f"/nowhere/{v}.mp4" for v in ids],
            "text": [""] * n,
            "label": [EMOTIONS[c] if s == "train" else None for c, s in zip(classes, split, strict=True)],
            "split": split,
            "valence": [None] * n,
        }
    )
    write_manifest(manifest, manifest_path(run_dir))

    errors = []
    for branch, dim in dims.items():
        means = rng.normal(size=(len(EMOTIONS), dim))
        means *= separation / np.linalg.norm(means, axis=1, keepdims=True)
        informative = rng.random(n) < p_informative
        x = rng.normal(size=(n, dim)) + means[classes] * informative[:, None]
        x = x * rng.uniform(0.5, 3.0, size=dim) + rng.normal(scale=5.0, size=dim)  # needs standardising
        keep = np.ones(n, dtype=bool)
        keep[rng.choice(n, size=missing, replace=False)] = False
        errors += [
            {"video_id": ids[i], "branch": branch, "stage": "encode", "error_type": "Fake", "message": "x"}
            for i in np.flatnonzero(~keep)
        ]
        table = feature_table([v for v, k in zip(ids, keep, strict=True) if k], x[keep], f"fake:{branch}")
        storage.write_table(table, storage.join(branch_dir(run_dir, branch), "part-0.parquet"))
    storage.write_table(pd.DataFrame(errors), errors_path(run_dir))
    return manifest


def start_driver(ray: Any, job: str, args: list[str], log: Path) -> subprocess.Popen:
    """A separate driver process running ``job`` (``module:function`` taking the config) on the test
    cluster, in its own process group so a test can kill it as a crash would; its output goes to ``log``
    (:func:`driver_log`), for the failure message when it ends too soon."""
    module, function = job.split(":")
    driver = (
        "import sys, ray\n"
        "from ecmf_ray.config import load_config\n"
        f"from {module} import {function}\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        f"{function}(load_config(['local'], sys.argv[2:]))\n"
    )
    address = ray.get_runtime_context().gcs_address
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", driver, address, *args],
            start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def driver_log(log: Path, chars: int = 4000) -> str:
    """The end of a driver's output (:func:`start_driver`)."""
    return f"driver output, last {chars} characters:\n{log.read_text(errors='replace')[-chars:]}"
