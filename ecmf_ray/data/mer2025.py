"""Importers: the MER2025 release folder, or any CSV/Parquet manifest, into a validated manifest."""

from __future__ import annotations

import io
import os

import pandas as pd

from ecmf_ray import storage
from ecmf_ray.data.manifest import (
    SCHEMA,
    ManifestError,
    PrepareResult,
    finalise,
    normalise_label,
    require_columns,
)

# MER2025 subtitle files have circulated re-saved as GBK by spreadsheet tools.
FALLBACK_ENCODINGS = ("gb18030",)


def read_csv_text(uri: str, issues: list[dict[str, str]]) -> pd.DataFrame:
    """A CSV as strings; UTF-8 (with or without BOM) expected, GB18030 accepted with an issue row."""
    if not storage.exists(uri):
        raise ManifestError(f"file not found: {uri}")
    raw = storage.read_bytes(uri)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        for encoding in FALLBACK_ENCODINGS:
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                continue
            issues.append(
                {
                    "name": "",
                    "problem": f"file is not UTF-8 (byte {err.start}); decoded as {encoding.upper()}",
                    "source": os.path.basename(uri),
                }
            )
            break
        else:
            raise ManifestError(f"{uri}: not UTF-8 text (invalid byte at offset {err.start})") from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ManifestError(f"{uri}: cannot parse as CSV: {err}") from None


def list_videos(video_dir: str, extensions: list[str]) -> dict[str, str]:
    """``{name: path}`` for the clips in a folder (the name is the file stem, as in the label CSV)."""
    if not storage.exists(video_dir):
        raise ManifestError(f"video folder not found: {video_dir}")
    wanted = tuple(e.lower() for e in extensions)
    videos: dict[str, str] = {}
    for name in storage.listdir(video_dir):
        stem, ext = os.path.splitext(name)
        if ext.lower() in wanted:
            videos.setdefault(stem, storage.join(video_dir, name))
    return videos


def import_mer2025(
    root: str,
    *,
    video_dir: str = "video",
    labels_file: str = "track1_train_disdim.csv",
    subtitles_file: str = "subtitle_chieng.csv",
    text_column: str = "chinese",
    video_extensions: tuple[str, ...] | list[str] = (".mp4", ".avi"),
) -> PrepareResult:
    """The MER2025 release layout: labelled names go to train, every other clip to test."""
    issues: list[dict[str, str]] = []
    labels_uri = storage.join(root, labels_file)
    subtitles_uri = storage.join(root, subtitles_file)
    labels = read_csv_text(labels_uri, issues)
    require_columns(labels, ["name", "discrete"], labels_uri)
    subtitles = read_csv_text(subtitles_uri, issues)
    require_columns(subtitles, ["name", text_column], subtitles_uri)
    videos = list_videos(storage.join(root, video_dir), list(video_extensions))

    labels = labels.assign(name=labels["name"].str.strip())
    # Report duplicates here, against the file that has them; finalise() would see one merged row.
    repeated = labels["name"].duplicated(keep="first")
    for name in labels.loc[repeated, "name"]:
        issues.append(
            {"name": name, "problem": "duplicate name; the first row is kept", "source": labels_file}
        )
    labels = labels[~repeated]
    subtitles = subtitles.assign(name=subtitles["name"].str.strip()).drop_duplicates("name", keep="first")
    text_by_name = dict(zip(subtitles["name"], subtitles[text_column], strict=True))
    valence = (
        pd.to_numeric(labels["valence"], errors="coerce")
        if "valence" in labels
        else pd.Series(float("nan"), index=labels.index)
    )

    rows = pd.DataFrame(
        {
            "video_id": labels["name"],
            # A name with no clip gets its expected path; finalise() reports it as missing.
            "video_path": labels["name"].map(
                lambda n: videos.get(n, storage.join(root, video_dir, f"{n}.mp4"))
            ),
            "label": labels["discrete"].map(normalise_label),
            "split": "train",
            "valence": valence,
        }
    )
    unlabelled = sorted(set(videos) - set(rows["video_id"]))
    rows = pd.concat(
        [
            rows,
            pd.DataFrame(
                {
                    "video_id": unlabelled,
                    "video_path": [videos[n] for n in unlabelled],
                    "label": None,
                    "split": "test",
                    "valence": float("nan"),
                }
            ),
        ],
        ignore_index=True,
    )
    # A clip with no subtitle row has empty text: ASR found no speech, which is not an error.
    rows["text"] = rows["video_id"].map(lambda n: text_by_name.get(n, "")).fillna("")
    return finalise(rows[list(SCHEMA.names)], issues, labels_file)


def import_manifest(uri: str) -> PrepareResult:
    """A CSV or Parquet manifest; relative video paths resolve against the manifest's folder."""
    issues: list[dict[str, str]] = []
    if str(uri).lower().endswith((".parquet", ".pq")):
        if not storage.exists(uri):
            raise ManifestError(f"file not found: {uri}")
        try:
            df = storage.read_table(uri).to_pandas()
        except Exception as err:
            raise ManifestError(f"{uri}: cannot read as Parquet: {err}") from None
    else:
        df = read_csv_text(uri, issues)
    require_columns(df, ["video_id", "video_path"], uri)
    base = os.path.dirname(str(uri)) if not storage.is_remote(uri) else str(uri).rsplit("/", 1)[0]
    rows = pd.DataFrame(
        {
            "video_id": df["video_id"].astype(str).str.strip(),
            "video_path": df["video_path"].astype(str).map(lambda p: storage.resolve(p.strip(), base)),
            "text": df["text"].fillna("").astype(str) if "text" in df else "",
            "label": df["label"].map(normalise_label) if "label" in df else None,
            "valence": pd.to_numeric(df["valence"], errors="coerce") if "valence" in df else float("nan"),
        }
    )
    # An empty or absent split follows the label: labelled rows train, the rest are test candidates.
    implied = rows["label"].notna().map({True: "train", False: "test"})
    given = df["split"].fillna("").astype(str).str.strip().str.lower() if "split" in df else implied
    rows["split"] = given.where(given != "", implied)
    return finalise(rows[list(SCHEMA.names)], issues, os.path.basename(str(uri)))
