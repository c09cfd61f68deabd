"""The manifest: one row per video, the input of every later stage.

Columns: ``video_id`` (unique string), ``video_path`` (absolute local path or URI), ``text`` (may be
empty), ``label`` (one of the six emotions or null), ``split`` (train | test | unlabeled), ``valence``
(float or null).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from ecmf_ray import storage
from ecmf_ray.labels import EMOTIONS

SPLITS: tuple[str, ...] = ("train", "test", "unlabeled")
REQUIRED_COLUMNS: tuple[str, ...] = ("video_id", "video_path")
SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("video_path", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("valence", pa.float64()),
    ]
)
ISSUE_COLUMNS = ["name", "problem", "source"]


class ManifestError(ValueError):
    """An input file that cannot be used at all (unreadable, or a required column missing)."""


@dataclass
class PrepareResult:
    """A validated manifest, the rows that had problems (``name, problem, source``) and import counts.

    ``counts`` holds what the importer saw beyond the manifest's own splits (e.g. candidates listed,
    candidates without a video, extra unlabelled clips left out), for the printed summary.
    """

    manifest: pd.DataFrame
    issues: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def issues_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.issues, columns=ISSUE_COLUMNS)


def manifest_path(run_dir: str) -> str:
    return storage.join(run_dir, "manifest.parquet")


def issues_path(run_dir: str) -> str:
    return storage.join(run_dir, "prepare_issues.csv")


def require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )


def normalise_label(value: object) -> str | None:
    """A label cell as a lowercase class name, or None when empty."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or pd.isna(value):
        return None
    text = str(value).strip().lower()
    return text or None


def existing_files(paths: list[str]) -> set[str]:
    """Which of ``paths`` exist, listing each parent folder once (27k HEAD requests on S3 would crawl)."""
    found: set[str] = set()
    by_parent: dict[str, list[str]] = {}
    for path in paths:
        by_parent.setdefault(os.path.dirname(path.rstrip("/")), []).append(path)
    for parent, members in by_parent.items():
        fs, parent_path = storage.get_fs(parent)
        try:
            listed = {os.path.basename(p) for p in fs.ls(parent_path, detail=False)}
        except FileNotFoundError:
            continue
        found.update(p for p in members if os.path.basename(p) in listed)
    return found


def finalise(
    rows: pd.DataFrame,
    issues: list[dict[str, str]],
    source: str,
    *,
    keep_missing_video: tuple[str, ...] = (),
    split_sources: dict[str, str] | None = None,
) -> PrepareResult:
    """Validate rows that already carry every manifest column; problem rows go to ``issues``.

    Kept as-is: valid rows. Kept, with an issue: a label outside the six classes (the video is still
    usable, as unlabeled), and a missing video in a split of ``keep_missing_video`` (a MER2025 candidate
    must still be predicted: its text, or the all-missing path, gives it a label). Dropped, with an
    issue: a repeated id (the first wins) and any other missing video. ``split_sources`` names the file
    a split's rows came from, for their missing-video issues (default: ``source``).
    """
    rows = rows.copy()
    rows["label"] = rows["label"].map(normalise_label)
    bad_label = rows["label"].notna() & ~rows["label"].isin(EMOTIONS)
    for name, label in rows.loc[bad_label, ["video_id", "label"]].itertuples(index=False):
        issues.append(
            {
                "name": name,
                "problem": f"label '{label}' is not one of {', '.join(EMOTIONS)}; kept as unlabeled",
                "source": source,
            }
        )
    rows.loc[bad_label, "label"] = None
    rows.loc[bad_label, "split"] = "unlabeled"

    bad_split = ~rows["split"].isin(SPLITS)
    for name, split in rows.loc[bad_split, ["video_id", "split"]].itertuples(index=False):
        issues.append(
            {"name": name, "problem": f"split '{split}' is not one of {', '.join(SPLITS)}", "source": source}
        )
    rows = rows[~bad_split]

    duplicated = rows["video_id"].duplicated(keep="first")
    for name in rows.loc[duplicated, "video_id"]:
        issues.append({"name": name, "problem": "duplicate name; the first row is kept", "source": source})
    rows = rows[~duplicated]

    present = existing_files(rows["video_path"].tolist())
    missing = ~rows["video_path"].isin(present)
    kept = missing & rows["split"].isin(keep_missing_video)
    for name, path, split in rows.loc[missing, ["video_id", "video_path", "split"]].itertuples(index=False):
        problem = f"video file not found: {path}"
        if split in keep_missing_video:
            problem += f"; kept in {split} (its visual and audio features will be missing)"
        issues.append({"name": name, "problem": problem, "source": (split_sources or {}).get(split, source)})
    rows = rows[~missing | kept]

    # A train row without a label cannot be trained on; it still gets features, as unlabeled.
    rows.loc[rows["split"].eq("train") & rows["label"].isna(), "split"] = "unlabeled"
    rows = rows.sort_values("video_id", kind="stable").reset_index(drop=True)
    return PrepareResult(manifest=rows[list(SCHEMA.names)], issues=issues)


def to_table(manifest: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(manifest[list(SCHEMA.names)], schema=SCHEMA, preserve_index=False)


def write_manifest(manifest: pd.DataFrame, uri: str) -> None:
    storage.write_table(to_table(manifest), uri)


def read_manifest(uri: str) -> pd.DataFrame:
    """The manifest written by ``prepare``, with a clear error when it is missing."""
    if not storage.exists(uri):
        raise ManifestError(f"manifest not found: {uri} (run `ecmf prepare` first)")
    table = storage.read_table(uri)
    df = table.to_pandas()
    require_columns(df, list(SCHEMA.names), uri)
    return df


def counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Videos per split and label (label ``-`` for unlabelled rows), for printing."""
    table = manifest.assign(label=manifest["label"].fillna("-"))
    return table.groupby(["split", "label"]).size().rename("videos").reset_index()
