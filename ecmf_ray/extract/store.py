"""Where extraction writes, how a rerun resumes, and the final per-branch outputs.

The pipeline's last stage writes on the workers: every ``extract.write.videos_per_file`` finished videos
become one shard under ``features/_shards/`` (all branches and their errors together), written
atomically, so a killed run leaves only whole shards. The driver sees only each shard's ids and keeps
the journal, ``features/_shards.index.parquet`` (``video_id, shard, errored``, in write order). A rerun
reads that one index, plus any shard written after its last update (a kill between the two), and
processes the rest; with ``extract.retry_errors`` the videos that errored are processed again.
When all videos are done, :func:`consolidate` rewrites ``features/<branch>/`` and ``errors.parquet``
from the shards, one row per video and branch (its first success, else its latest error); it
is idempotent, so a rerun of a finished run rewrites the same files. The shards stay as the run's journal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
from omegaconf import OmegaConf

from ecmf_ray import features, storage
from ecmf_ray.data.manifest import manifest_path, read_manifest
from ecmf_ray.enrich.sources import resolve_sources
from ecmf_ray.enrich.text import enriched_texts
from ecmf_ray.extract.faces import face_source
from ecmf_ray.extract.rows import count_column, error_column, feature_column, parse_error_cell
from ecmf_ray.freshness import read_record, stale_reason

logger = logging.getLogger(__name__)

SHARDS = "_shards"
ROWS_PER_FILE = 50_000
FACE_RATIO = "face_ratio"


def shards_dir(run_dir: str) -> str:
    return storage.join(features.features_dir(run_dir), SHARDS)


def index_path(run_dir: str) -> str:
    return storage.join(features.features_dir(run_dir), f"{SHARDS}.index.parquet")


def spec_path(run_dir: str) -> str:
    return storage.join(features.features_dir(run_dir), "spec.json")


def inputs_path(run_dir: str) -> str:
    """Per video, a hash of what was extracted from it (its video path and the text the text branch encodes)."""
    return storage.join(features.features_dir(run_dir), "inputs.parquet")


# ------------------------------------------------------------------------------------------- the spec


def text_source(cfg: Any) -> dict[str, Any]:
    """What the text branch encodes: the transcript, or the enrichment template, its switches and the
    LLM sources it draws on (name, backend, model or file, media and its limits, fields)."""
    if not cfg.enrich.enabled:
        return {"source": "transcript"}
    keys = ("text_template", "template_separator", "use_label", "use_keywords", "use_description")
    sources = [s.spec() for s in resolve_sources(cfg.enrich)]
    return {"source": "enriched", **{k: OmegaConf.to_object(cfg.enrich)[k] for k in keys}, "sources": sources}


def feature_spec(cfg: Any) -> dict[str, Any]:
    """Everything that determines the feature values (not batch sizes or pool sizes).

    Written to ``features/spec.json``; a rerun with a different spec refuses to mix its vectors in.
    """
    face_source(cfg.extract.faces)  # a bad source fails here, before any clip is decoded
    e = OmegaConf.to_object(cfg.extract)
    clip = {"model": str(cfg.models.clip), "layers": e["clip"]["output"], "dtype": e["clip"]["dtype"]}
    spec: dict[str, Any] = {
        "branches": list(e["branches"]),
        "frames": e["frames"],
        "frame": {**clip, "pooling": e["clip"]["pooling"]},
        "face": {**clip, "pooling": e["clip"]["pooling"], "faces": e["faces"]},
        "audio": {
            "model": str(cfg.models.hubert),
            "layers": ",".join(str(x) for x in e["hubert"]["layers"]),
            "combine": e["hubert"]["combine"],
            "dtype": e["hubert"]["dtype"],
            **e["audio"],
        },
        "text": {
            "model": str(cfg.models.roberta),
            "layers": ",".join(str(x) for x in e["roberta"]["layers"]),
            "combine": e["roberta"]["combine"],
            "max_length": e["roberta"]["max_length"],
            "dtype": e["roberta"]["dtype"],
            **text_source(cfg),
        },
    }
    return json.loads(json.dumps(spec))  # plain JSON types, so a reread compares equal


def check_spec(run_dir: str, spec: dict[str, Any]) -> None:
    """Record ``spec`` for this run, or refuse if earlier shards were made with another one."""
    path = spec_path(run_dir)
    if storage.exists(path) and storage.listdir(shards_dir(run_dir)):
        previous = json.loads(storage.read_text(path))
        if previous != spec:
            changed = sorted(k for k in set(spec) | set(previous) if spec.get(k) != previous.get(k))
            raise ValueError(
                f"{run_dir} holds features extracted with another configuration (differs in: "
                f"{', '.join(changed)}); use a new run_dir or delete {features.features_dir(run_dir)}"
            )
    storage.write_text(path, json.dumps(spec, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------------ the inputs


def input_digests(rows: pd.DataFrame) -> pd.Series:
    """video_id -> a hash of the row's ``video_path`` and ``text``."""
    hashed = pd.util.hash_pandas_object(rows[["video_path", "text"]].astype(str), index=False)
    return pd.Series(hashed.to_numpy().astype(str), index=rows["video_id"].to_numpy(), name="digest")


def changed_inputs(run_dir: str, rows: pd.DataFrame, done: set[str]) -> list[str]:
    """Videos already extracted whose video path or text differs now from what was extracted."""
    if not storage.exists(inputs_path(run_dir)):
        return []
    recorded = storage.read_table(inputs_path(run_dir)).to_pandas().set_index("video_id")["digest"]
    now = input_digests(rows)
    both = now.index[now.index.isin(list(done)) & now.index.isin(recorded.index)]
    return sorted(both[now[both].to_numpy() != recorded[both].to_numpy()])


def record_inputs(run_dir: str, rows: pd.DataFrame) -> None:
    storage.write_table(input_digests(rows).rename_axis("video_id").reset_index(), inputs_path(run_dir))


def extraction_rows(cfg: Any, manifest: pd.DataFrame) -> pd.DataFrame:
    """``video_id, video_path, text`` of every manifest video, the text being what the text branch encodes."""
    # The text branch's input comes from one hook: the transcript, or the enriched text when enabled.
    texts = enriched_texts(cfg, manifest)
    return manifest[["video_id", "video_path"]].assign(text=texts.reindex(manifest["video_id"]).to_numpy())


def current(cfg: Any) -> str | None:
    """None when ``features/`` holds every manifest video, extracted with the current spec from its
    current video and text; else why not."""
    reason = stale_reason("features/", read_record(spec_path(cfg.run_dir)), feature_spec(cfg))
    if reason:
        return reason
    manifest = read_manifest(manifest_path(cfg.run_dir))
    journal = read_journal(cfg.run_dir)
    done = completed_ids(journal)
    todo = int((~manifest["video_id"].isin(done)).sum())
    if todo or not all(storage.exists(features.branch_dir(cfg.run_dir, b)) for b in cfg.extract.branches):
        return f"{todo} of {len(manifest)} videos not extracted yet"
    changed = changed_inputs(cfg.run_dir, extraction_rows(cfg, manifest), done)
    if changed:
        return f"{len(changed)} extracted videos have another video file or text now (e.g. '{changed[0]}')"
    retry = manifest["video_id"].isin(completed_ids(journal, retry_errors=True))
    if cfg.extract.retry_errors and not retry.all():
        return f"{int((~retry).sum())} videos errored and extract.retry_errors is on"
    return None


# ------------------------------------------------------------------------------------------ the shards


def shard_table(batch: dict[str, np.ndarray], branches: list[str]) -> pa.Table:
    """One finished batch: ``video_id`` and, per branch, its vector, error cell and count."""
    columns: dict[str, pa.Array] = {"video_id": pa.array(batch["video_id"].tolist(), pa.string())}
    for branch in branches:
        matrix = np.ascontiguousarray(batch[feature_column(branch)], dtype=np.float32)
        columns[feature_column(branch)] = pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1]
        )
        columns[error_column(branch)] = pa.array(batch[error_column(branch)].tolist(), pa.string())
        columns[count_column(branch)] = pa.array(batch[count_column(branch)], pa.int32())
    if "face" in branches:
        columns[FACE_RATIO] = pa.array(batch[FACE_RATIO], pa.float32())
    return pa.table(columns)


def write_shard(batch: dict[str, np.ndarray], run_dir: str, branches: list[str]) -> pd.DataFrame:
    """Write a batch atomically and return its journal rows (``video_id, shard, errored``).

    The pipeline's write stage (a Ray Data task on a worker): the vectors go to storage and only these
    rows go on to the driver. The name hashes the ids, so writing a batch twice (a retried task) overwrites.
    """
    ids = sorted(batch["video_id"].tolist())
    name = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:20] + ".parquet"
    table = shard_table(batch, branches)
    storage.write_table(table, storage.join(shards_dir(run_dir), name))
    return journal_rows(table, name)


def journal_rows(table: pa.Table, shard: str) -> pd.DataFrame:
    """``video_id, shard, errored`` of a shard's rows; errored: any branch's error cell is set."""
    present = [c for c in map(error_column, features.BRANCHES) if c in table.column_names]
    cells = [table.column(c).to_numpy(zero_copy_only=False) for c in present]
    failed = (
        np.logical_or.reduce([c.astype(str) != "" for c in cells]) if cells else np.zeros(len(table), bool)
    )
    return pd.DataFrame({"video_id": table.column("video_id").to_pylist(), "shard": shard, "errored": failed})


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


JOURNAL_COLUMNS = ["video_id", "shard", "errored"]


def read_journal(run_dir: str) -> pd.DataFrame:
    """Every video row written so far (``video_id, shard, errored``), in write order.

    The index, for the shards it names that exist; then the rows of any shard it does not name yet (one
    written just before a kill), read from the shard itself.
    """
    names = shard_names(run_dir)
    index = pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in zip(JOURNAL_COLUMNS, (str, str, bool), strict=True)}
    )
    if storage.exists(index_path(run_dir)):
        index = storage.read_table(index_path(run_dir)).to_pandas()
        index = index[index["shard"].isin(names)]
    frames = [index]
    wanted = ["video_id", *(error_column(b) for b in features.BRANCHES)]
    for name in sorted(set(names) - set(index["shard"])):
        frames.append(journal_rows(read_shards(run_dir, [name], wanted), name))
    return pd.concat(frames, ignore_index=True)


def write_journal(run_dir: str, journal: pd.DataFrame) -> None:
    storage.write_table(
        pa.Table.from_pandas(journal[JOURNAL_COLUMNS], preserve_index=False), index_path(run_dir)
    )


def completed_ids(journal: pd.DataFrame, retry_errors: bool = False) -> set[str]:
    """Videos a run need not process again: every written one, or with ``retry_errors`` those written
    without an error at least once."""
    if retry_errors:
        journal = journal[~journal["errored"]]
    return set(journal["video_id"])


# ----------------------------------------------------------------------------------- planning a run


@dataclass
class RunPlan:
    """The manifest's ids, the rows still to extract (``video_id, video_path, text``) and the journal."""

    run_dir: str
    video_ids: list[str]
    todo: pd.DataFrame
    resumed: int
    journal: pd.DataFrame

    def record(self, rows: pd.DataFrame) -> None:
        """Add a written shard's journal rows and rewrite the index (one small file)."""
        self.journal = pd.concat([self.journal, rows[JOURNAL_COLUMNS]], ignore_index=True)
        write_journal(self.run_dir, self.journal)


def plan_run(cfg: Any) -> RunPlan:
    """Read the manifest and the text source, check the spec, and leave out videos already written."""
    unknown = set(cfg.extract.branches) - set(features.BRANCHES)
    if unknown:
        raise ValueError(f"extract.branches has unknown {sorted(unknown)}; known: {features.BRANCHES}")
    manifest = read_manifest(manifest_path(cfg.run_dir))
    if manifest.empty:
        raise ValueError("the manifest has no videos")
    if manifest["video_id"].duplicated().any():
        raise ValueError("the manifest repeats video ids; rerun `ecmf prepare`")
    check_spec(cfg.run_dir, feature_spec(cfg))
    rows = extraction_rows(cfg, manifest)
    journal = read_journal(cfg.run_dir)
    write_journal(cfg.run_dir, journal)  # shards written after the index's last update: indexed now
    changed = changed_inputs(cfg.run_dir, rows, completed_ids(journal))
    if changed:
        raise ValueError(
            f"{len(changed)} videos in {features.features_dir(cfg.run_dir)} were extracted from another video "
            f"file or text than the manifest (or enrichment) gives now (e.g. '{changed[0]}'); "
            f"use a new run_dir or delete {features.features_dir(cfg.run_dir)}"
        )
    record_inputs(cfg.run_dir, rows)
    done = completed_ids(journal, retry_errors=bool(cfg.extract.retry_errors))
    todo = rows[~rows["video_id"].isin(done)].reset_index(drop=True)
    return RunPlan(cfg.run_dir, manifest["video_id"].tolist(), todo, len(rows) - len(todo), journal)


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


def consolidate(
    run_dir: str, video_ids: list[str], spec: dict[str, Any], journal: pd.DataFrame
) -> dict[str, Any]:
    """Write ``features/<branch>/`` and ``errors.parquet`` from the shards: every manifest video, once.

    A video with no shard row (only possible if a run was cut short) gets a ``pipeline`` error per branch,
    so every manifest row is accounted for in every branch.
    """
    branches = list(spec["branches"])
    shards = list(dict.fromkeys(journal["shard"]))  # in write order
    errors: list[dict[str, str]] = []
    failed: set[str] = set()
    written: dict[str, int] = {}
    for branch in branches:
        columns = ["video_id", feature_column(branch), error_column(branch), count_column(branch)]
        if branch == "face":
            columns.append(FACE_RATIO)
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
        )
        _write_parts(features.branch_dir(run_dir, branch), out)
        written[branch] = len(out)
    errors.sort(key=lambda r: (r["video_id"], branches.index(r["branch"])))
    storage.write_table(features.errors_table(errors), features.errors_path(run_dir))
    return {
        "videos": len(video_ids),
        "videos_ok": len(video_ids) - len(failed),
        "videos_errored": len(failed),
        "rows": written,
        "errors": len(errors),
    }


def finish_run(cfg: Any, plan: RunPlan, processed: int, seconds: float) -> dict[str, Any]:
    """Consolidate, then print the one summary line."""
    summary = consolidate(cfg.run_dir, plan.video_ids, feature_spec(cfg), plan.journal)
    rate = processed / seconds if seconds > 0 else float("nan")
    summary.update(processed=processed, resumed=plan.resumed, seconds=round(seconds, 3), videos_per_s=rate)
    summary["output"] = features.features_dir(cfg.run_dir)
    print(
        f"extract: {summary['videos_ok']} videos ok, {summary['videos_errored']} videos errored, "
        f"{rate:.2f} videos/s ({processed} processed in {seconds:.1f} s, {plan.resumed} already done) "
        f"-> {summary['output']}"
    )
    logger.info("extract summary: %s", summary)
    return summary
