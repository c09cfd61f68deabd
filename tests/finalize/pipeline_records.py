"""Mark a fake feature run as prepared and extracted, recording what those steps record."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data.prepare import dataset_settings
from ecmf_ray.data.prepare import record_path as prepare_record
from ecmf_ray.extract.store import extraction_rows, feature_spec, record_inputs, shards_dir, spec_path
from ecmf_ray.freshness import write_record


def mark_prepared(cfg: DictConfig) -> None:
    write_record(prepare_record(cfg.run_dir), dataset_settings(cfg))


def mark_extracted(cfg: DictConfig, manifest: pd.DataFrame) -> None:
    """What a finished `ecmf extract` leaves besides the feature rows: spec, inputs record, shards."""
    write_record(spec_path(cfg.run_dir), feature_spec(cfg))
    record_inputs(cfg.run_dir, extraction_rows(cfg, manifest))
    storage.write_table(manifest[["video_id"]], storage.join(shards_dir(cfg.run_dir), "all.parquet"))
    for branch in cfg.extract.branches:
        Path(cfg.run_dir, "features", branch).mkdir(parents=True, exist_ok=True)
