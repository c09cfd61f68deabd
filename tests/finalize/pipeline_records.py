"""Mark a fake feature run as prepared and extracted, recording what those steps record."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data.prepare import dataset_settings
from ecmf_ray.data.prepare import record_path as prepare_record
from ecmf_ray.extract.journal import shards_dir, specs_key
from ecmf_ray.extract.spec import branch_digests, extraction_rows, feature_spec, record_inputs, spec_path
from ecmf_ray.freshness import write_record


def mark_prepared(cfg: DictConfig) -> None:
    write_record(prepare_record(cfg.run_dir), dataset_settings(cfg))


def mark_extracted(cfg: DictConfig, manifest: pd.DataFrame) -> None:
    """What a finished `ecmf extract` leaves besides the feature rows: spec, inputs record, shards."""
    write_record(spec_path(cfg.run_dir), feature_spec(cfg))
    record_inputs(cfg.run_dir, extraction_rows(cfg, manifest))
    write_shard_of(cfg, manifest["video_id"])
    for branch in cfg.extract.branches:
        Path(cfg.run_dir, "features", branch).mkdir(parents=True, exist_ok=True)


def write_shard_of(cfg: DictConfig, video_ids: pd.Series) -> None:
    """The journal's one shard: these videos, written in every branch under the current spec."""
    key = specs_key(branch_digests(feature_spec(cfg)))
    rows = pd.DataFrame({"video_id": video_ids.to_numpy(), "specs": key})
    storage.write_table(rows, storage.join(shards_dir(cfg.run_dir), "all.parquet"))
