"""The run plan and consolidation: what a run extracts, and the final per-branch outputs.

A run reads the journal (:mod:`ecmf_ray.extract.journal`) and, per branch, leaves out the videos already
written under the branch's current spec (:mod:`ecmf_ray.extract.spec`). Videos that lack the same
branches are extracted together in one pass, for those branches only: after a changed
``extract.hubert.layers`` only the audio branch runs again, and CLIP's frame and face features are kept.
The consolidated features of a branch whose spec changed are moved to ``features/<branch>.<hash>/``
(the old spec's short digest) and kept until a later run finishes.

When all videos are done, :func:`consolidate` rewrites ``features/<branch>/`` and ``errors.parquet``
from the shards, one row per video and branch (its first success under the branch's spec, else its
latest error), and records the spec per branch in ``features/spec.json``; it is idempotent, so a rerun
of a finished run rewrites the same files. The shards stay as the run's journal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from omegaconf import OmegaConf

from ecmf_ray import features, storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.extract import sources
from ecmf_ray.extract.journal import (
    FACE_RATIO,
    JOURNAL_COLUMNS,
    branch_rows,
    completed_ids,
    read_journal,
    read_shards,
    write_journal,
)
from ecmf_ray.extract.rows import (
    SOURCED_BRANCHES,
    count_column,
    error_column,
    feature_column,
    parse_error_cell,
    source_column,
)
from ecmf_ray.extract.spec import (
    SHORT_HASH,
    branch_digests,
    changed_branches,
    changed_inputs,
    extraction_rows,
    feature_spec,
    read_spec,
    record_inputs,
    spec_path,
)
from ecmf_ray.freshness import digest, write_record

logger = logging.getLogger(__name__)

ROWS_PER_FILE = 50_000


def missing_branches(
    journal: pd.DataFrame, video_ids: pd.Series, digests: dict[str, str], retry_errors: bool
) -> pd.Series:
    """video_id -> the branches (in ``digests`` order) not yet written for it under their current spec."""
    done = {b: completed_ids(journal, b, d, retry_errors) for b, d in digests.items()}
    return pd.Series(
        [tuple(b for b in digests if v not in done[b]) for v in video_ids], index=video_ids.to_numpy()
    )


def _changed_reason(changed: dict[str, list[str]], spec: dict[str, Any]) -> str:
    keys = ", ".join(f"{b}.{k}" for b, ks in changed.items() for k in ks)
    kept = [b for b in spec if b not in changed]
    return (
        f"features were made with other settings (changed: {keys}): {', '.join(changed)} extracted again"
        + (f", {', '.join(kept)} kept" if kept else "")
    )


def current(cfg: Any) -> str | None:
    """None when ``features/`` holds every manifest video in every branch, extracted with the branch's
    current spec from the video's current video and text; else why not."""
    wanted = feature_spec(cfg)
    recorded = read_spec(cfg.run_dir)
    if not recorded:
        return "features/ records no settings"
    changed = changed_branches(recorded, wanted)
    if changed:
        return _changed_reason(changed, wanted)
    manifest = read_manifest(manifest_path(cfg.run_dir))
    journal = read_journal(cfg.run_dir)
    digests = branch_digests(wanted)
    todo = int((missing_branches(journal, manifest["video_id"], digests, False).map(len) > 0).sum())
    if todo or not all(storage.exists(features.branch_dir(cfg.run_dir, b)) for b in wanted):
        return f"{todo} of {len(manifest)} videos not extracted yet"
    if set(recorded) != set(wanted):
        return f"features/ records branches {sorted(recorded)}, extract.branches is {sorted(wanted)}"
    changed_videos = changed_inputs(cfg.run_dir, extraction_rows(cfg, manifest), set(journal["video_id"]))
    if changed_videos:
        return (
            f"{len(changed_videos)} extracted videos have another video file or text now "
            f"(e.g. '{changed_videos[0]}')"
        )
    retry = missing_branches(journal, manifest["video_id"], digests, True).map(len) > 0
    if cfg.extract.retry_errors and retry.any():
        return f"{int(retry.sum())} videos errored and extract.retry_errors is on"
    return None


# ----------------------------------------------------------------------------------- planning a run


@dataclass
class Pass:
    """Videos that lack the same branches, extracted together for those branches only."""

    branches: list[str]
    todo: pd.DataFrame  # video_id, video_path, text


@dataclass
class RunPlan:
    """The manifest's ids, the spec per branch, the passes still to run and the journal."""

    run_dir: str
    video_ids: list[str]
    spec: dict[str, Any]
    passes: list[Pass]
    resumed: int
    journal: pd.DataFrame

    @property
    def todo(self) -> int:
        """Videos still to extract (in some branch)."""
        return sum(len(p.todo) for p in self.passes)

    def digests(self, branches: list[str]) -> dict[str, str]:
        """branch -> spec digest, for a pass's shards."""
        every = branch_digests(self.spec)
        return {b: every[b] for b in branches}

    def record(self, rows: pd.DataFrame) -> None:
        """Add a written shard's journal rows and rewrite the index (one small file)."""
        self.journal = pd.concat([self.journal, rows[JOURNAL_COLUMNS]], ignore_index=True)
        write_journal(self.run_dir, self.journal)


def pass_config(cfg: Any, branches: list[str]) -> Any:
    """``cfg`` extracting only ``branches``: decoding, the encoder pools and the writer all follow it."""
    return OmegaConf.merge(cfg, {"extract": {"branches": list(branches)}})


def retired_dir(run_dir: str, branch: str, branch_spec: dict[str, Any]) -> str:
    """Where a branch's features made with ``branch_spec`` wait once its spec changed."""
    return storage.join(features.features_dir(run_dir), f"{branch}.{digest(branch_spec)[:SHORT_HASH]}")


def retire_changed_branches(run_dir: str, wanted: dict[str, Any]) -> dict[str, list[str]]:
    """Move the features of every branch whose spec changed to ``features/<branch>.<hash>/``; returns
    branch -> changed keys, and logs which branches are extracted again and why."""
    recorded = read_spec(run_dir)
    changed = changed_branches(recorded, wanted)
    for branch in changed:
        source = features.branch_dir(run_dir, branch)
        if storage.exists(source):
            target = retired_dir(run_dir, branch, recorded[branch])
            if storage.exists(target):
                storage.remove(target, recursive=True)
            fs, path = storage.get_fs(source)
            fs.mv(path, storage.get_fs(target)[1], recursive=True)
    if changed:
        message = f"extract: {_changed_reason(changed, wanted)}"
        print(message)
        logger.info(message)
    return changed


def plan_run(cfg: Any) -> RunPlan:
    """Read the manifest and the text source, retire branches whose spec changed, and group the videos
    by the branches they still lack."""
    unknown = set(cfg.extract.branches) - set(features.BRANCHES)
    if unknown:
        raise ValueError(f"extract.branches has unknown {sorted(unknown)}; known: {features.BRANCHES}")
    manifest = read_manifest(manifest_path(cfg.run_dir))
    if manifest.empty:
        raise ValueError("the manifest has no videos")
    if manifest["video_id"].duplicated().any():
        raise ValueError("the manifest repeats video ids; rerun `ecmf prepare`")
    spec = feature_spec(cfg)
    rows = extraction_rows(cfg, manifest)
    journal = read_journal(cfg.run_dir)
    write_journal(cfg.run_dir, journal)  # shards written after the index's last update: indexed now
    changed = changed_inputs(cfg.run_dir, rows, set(journal["video_id"]))
    if changed:
        raise ValueError(
            f"{len(changed)} videos in {features.features_dir(cfg.run_dir)} were extracted from another video "
            f"file or text than the manifest (or enrichment) gives now (e.g. '{changed[0]}'); "
            f"use a new run_dir or delete {features.features_dir(cfg.run_dir)}"
        )
    record_inputs(cfg.run_dir, rows)
    retire_changed_branches(cfg.run_dir, spec)
    need = missing_branches(journal, rows["video_id"], branch_digests(spec), bool(cfg.extract.retry_errors))
    passes = [
        Pass(list(branches), rows[need.map(lambda n, b=branches: n == b).to_numpy()].reset_index(drop=True))
        for branches in sorted(set(need) - {()})
    ]
    resumed = int((need.map(len) == 0).sum())
    return RunPlan(cfg.run_dir, manifest["video_id"].tolist(), spec, passes, resumed, journal)


def input_blocks(todo: pd.DataFrame, batch_size: int) -> list[pd.DataFrame]:
    """The rows to extract in decode-sized chunks (one Ray Data block each)."""
    return [todo.iloc[i : i + batch_size] for i in range(0, len(todo), batch_size)]


# ------------------------------------------------------------------------------------- consolidation


def _chosen_rows(table: pa.Table, keep_ids: list[str], ok: np.ndarray) -> pa.Table:
    """One row per manifest video, in manifest order: its first success, else its latest error.

    Rows come in write order; a video has several only when its errors were retried, and a retry must
    not replace a branch that had already succeeded.
    """
    rows = pd.DataFrame({"video_id": table.column("video_id").to_pylist(), "ok": ok})
    rows["rank"] = rows["video_id"].map({v: i for i, v in enumerate(keep_ids)})
    rows = rows[rows["rank"].notna()].reset_index()
    rows["priority"] = np.where(rows["ok"], -rows["index"], rows["index"])
    chosen = rows.sort_values(["ok", "priority"]).drop_duplicates("video_id", keep="last")
    return table.take(pa.array(chosen.sort_values("rank")["index"].to_numpy(), pa.int64()))


def _write_parts(folder: str, table: pa.Table) -> None:
    """Replace a branch folder's contents with ``part-NNNNN.parquet`` files."""
    storage.makedirs(folder)
    names = []
    for i, start in enumerate(range(0, max(len(table), 1), ROWS_PER_FILE)):
        names.append(f"part-{i:05d}.parquet")
        storage.write_table(table.slice(start, ROWS_PER_FILE), storage.join(folder, names[-1]))
    for stale in set(storage.listdir(folder)) - set(names):
        storage.remove(storage.join(folder, stale), recursive=True)


def _remove_retired(run_dir: str) -> None:
    """Drop the features kept from branches' earlier specs (``features/<branch>.<hash>/``)."""
    folder = features.features_dir(run_dir)
    for name in storage.listdir(folder):
        if name.split(".")[0] in features.BRANCHES and "." in name:
            storage.remove(storage.join(folder, name), recursive=True)


def consolidate(
    run_dir: str, video_ids: list[str], spec: dict[str, Any], journal: pd.DataFrame
) -> dict[str, Any]:
    """Write ``features/<branch>/`` and ``errors.parquet`` from the shards: every manifest video, once,
    from the rows written under the branch's spec; then record the spec per branch.

    A video with no shard row (only possible if a run was cut short) gets a ``pipeline`` error per branch,
    so every manifest row is accounted for in every branch.
    """
    branches = list(spec)
    digests = branch_digests(spec)
    errors: list[dict[str, str]] = []
    failed: set[str] = set()
    written: dict[str, int] = {}
    for branch in branches:
        shards = list(dict.fromkeys(branch_rows(journal, branch, digests[branch])["shard"]))  # write order
        columns = ["video_id", feature_column(branch), error_column(branch), count_column(branch)]
        if branch == "face":
            columns.append(FACE_RATIO)
        if branch in SOURCED_BRANCHES:
            columns.append(source_column(branch))
        table = read_shards(run_dir, shards, columns)
        table = _chosen_rows(
            table, video_ids, table.column(error_column(branch)).to_numpy(zero_copy_only=False) == ""
        )
        cells = table.column(error_column(branch)).to_pylist()
        ids = table.column("video_id").to_pylist()
        ok = np.array([not c for c in cells], dtype=bool)
        for video_id, cell in zip(ids, cells, strict=True):
            if cell:
                errors.append({"video_id": video_id, "branch": branch, **parse_error_cell(cell)})
                failed.add(video_id)
        for video_id in sorted(set(video_ids) - set(ids)):
            errors.append(
                {
                    "video_id": video_id,
                    "branch": branch,
                    "stage": "pipeline",
                    "error_type": "NotProcessed",
                    "message": "no result was written for this video; rerun extract",
                }
            )
            failed.add(video_id)
        kept = table.filter(pa.array(ok))
        vectors = kept.column(feature_column(branch)).combine_chunks()
        meta = spec[branch]
        out = features.feature_table(
            kept.column("video_id").to_pylist(),
            vectors.flatten().to_numpy().reshape(len(kept), vectors.type.list_size),
            model=meta["model"],
            layers=meta["layers"],
            dtype=meta["dtype"],
            n_frames=kept.column(count_column(branch)).to_numpy(),
            face_ratio=kept.column(FACE_RATIO).to_numpy() if branch == "face" else None,
            source=kept.column(source_column(branch)).to_pylist() if branch in SOURCED_BRANCHES else None,
        )
        _write_parts(features.branch_dir(run_dir, branch), out)
        written[branch] = len(out)
    errors.sort(key=lambda r: (r["video_id"], branches.index(r["branch"])))
    storage.write_table(features.errors_table(errors), features.errors_path(run_dir))
    write_record(spec_path(run_dir), spec)
    _remove_retired(run_dir)
    return {
        "videos": len(video_ids),
        "videos_ok": len(video_ids) - len(failed),
        "videos_errored": len(failed),
        "rows": written,
        "errors": len(errors),
    }


def finish_run(cfg: Any, plan: RunPlan, processed: int, seconds: float) -> dict[str, Any]:
    """Consolidate, then print the one summary line."""
    summary = consolidate(cfg.run_dir, plan.video_ids, plan.spec, plan.journal)
    rate = processed / seconds if seconds > 0 else float("nan")
    summary.update(processed=processed, resumed=plan.resumed, seconds=round(seconds, 3), videos_per_s=rate)
    summary["output"] = features.features_dir(cfg.run_dir)
    print(
        f"extract: {summary['videos_ok']} videos ok, {summary['videos_errored']} videos errored, "
        f"{rate:.2f} videos/s ({processed} processed in {seconds:.1f} s, {plan.resumed} already done) "
        f"-> {summary['output']}"
    )
    summary["sources"] = sources.report_sources(cfg.run_dir, list(plan.spec))
    logger.info("extract summary: %s", summary)
    return summary
