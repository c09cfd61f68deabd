"""The ``prepare`` job: build ``${run_dir}/manifest.parquet`` and ``prepare_issues.csv``."""

from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ecmf_ray import storage
from ecmf_ray.data import manifest as mf
from ecmf_ray.data.mer2025 import import_manifest, import_mer2025
from ecmf_ray.freshness import read_record, stale_reason, write_record

logger = logging.getLogger(__name__)


def record_path(run_dir: str) -> str:
    """The dataset settings the manifest was built from."""
    return storage.join(run_dir, "prepare.json")


def dataset_settings(cfg: DictConfig) -> dict:
    return {"dataset": OmegaConf.to_container(cfg.dataset, resolve=True)}


def current(cfg: DictConfig) -> str | None:
    """None when the manifest exists and was built from the current ``dataset:`` settings; else why not."""
    if not storage.exists(mf.manifest_path(cfg.run_dir)):
        return "no manifest.parquet yet"
    return stale_reason("manifest.parquet", read_record(record_path(cfg.run_dir)), dataset_settings(cfg))


def run_prepare(cfg: DictConfig) -> dict:
    """Import the configured dataset, validate it, and write the manifest and the issues file."""
    ds = cfg.dataset
    if ds.format == "mer2025":
        if not ds.root:
            raise mf.ManifestError("dataset.root is not set (the MER2025 release folder)")
        result = import_mer2025(
            str(ds.root),
            video_dir=ds.video_dir,
            labels_file=ds.labels_file,
            candidates_file=ds.candidates_file,
            subtitles_file=ds.subtitles_file,
            text_column=ds.text_column,
            video_extensions=list(ds.video_extensions),
            unlabeled=ds.unlabeled,
            seed=int(cfg.seed),
        )
    elif ds.format == "manifest":
        if not ds.manifest:
            raise mf.ManifestError("dataset.manifest is not set (a CSV or Parquet manifest)")
        result = import_manifest(str(ds.manifest))
    else:
        raise mf.ManifestError(f"dataset.format must be 'mer2025' or 'manifest', not '{ds.format}'")

    out = mf.manifest_path(cfg.run_dir)
    mf.write_manifest(result.manifest, out)
    issues_uri = mf.issues_path(cfg.run_dir)
    storage.write_csv(result.issues_frame(), issues_uri)
    write_record(record_path(cfg.run_dir), dataset_settings(cfg))

    table = mf.counts(result.manifest)
    print(f"manifest: {len(result.manifest)} videos -> {out}")
    print(split_line(result.manifest, result.counts.get("left_out", 0), ds.format))
    for line in describe_import(result.counts, ds):
        print(f"  {line}")
    print(table.to_string(index=False))
    print(f"issues: {len(result.issues)} rows -> {issues_uri}")
    return {
        "videos": len(result.manifest),
        "issues": len(result.issues),
        "manifest": out,
        "issues_file": issues_uri,
        **result.counts,
    }


def split_line(manifest: pd.DataFrame, left_out: int, dataset_format: str) -> str:
    """One line: clips per split, and how many clips of the input are not in the manifest."""
    per_split = manifest["split"].value_counts()
    splits = ", ".join(f"{s} {int(per_split.get(s, 0))}" for s in mf.SPLITS)
    what = "clips under video/" if dataset_format == "mer2025" else "manifest rows"
    return f"clips per split: {splits}; left out: {left_out} ({what} not in the manifest)"


def describe_import(counts: dict[str, int], ds: DictConfig) -> list[str]:
    """What the importer took from where, beyond the split counts: labelled, candidates, extras."""
    if "labelled" not in counts:
        return []
    lines = [f"labelled: {counts['labelled']} in {ds.labels_file} (train)"]
    if "candidates" not in counts:
        lines.append("dataset.candidates_file=null: every unlabelled clip is a test candidate")
        return lines
    lines.append(
        f"candidates: {counts['candidates']} in {ds.candidates_file} (test); "
        f"{counts['candidates_missing_video']} without a video (kept, see issues), "
        f"{counts['candidates_labelled']} also labelled (kept in train)"
    )
    left_out = counts["extra_clips"] - counts["extra_included"]
    lines.append(
        f"extra unlabelled clips: {counts['extra_clips']}; {counts['extra_included']} included as unlabeled, "
        f"{left_out} left out (dataset.unlabeled={ds.unlabeled})"
    )
    return lines
