"""Importers: the MER2025 release folder, or any CSV/Parquet manifest, into a validated manifest."""

from __future__ import annotations

import io
import os

import numpy as np
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


def parse_unlabeled(value: object) -> int | None:
    """``dataset.unlabeled`` as how many extra clips to include: 0 (``none``), None (``all``) or a count."""
    if isinstance(value, str) and value.strip().lower() in ("none", "all"):
        return 0 if value.strip().lower() == "none" else None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ManifestError(f"dataset.unlabeled must be none, all or a number of clips, not {value!r}")
    try:
        count = int(value)
    except ValueError:
        raise ManifestError(
            f"dataset.unlabeled must be none, all or a number of clips, not {value!r}"
        ) from None
    if count < 0:
        raise ManifestError(f"dataset.unlabeled must be >= 0, not {count}")
    return count


def sample_extras(names: list[str], unlabeled: object, seed: int) -> list[str]:
    """The extra (neither labelled nor candidate) clips to include: none, all, or a seeded sample of N."""
    count = parse_unlabeled(unlabeled)
    ordered = sorted(names)
    if count is None or count >= len(ordered):
        return ordered
    picked = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return sorted(ordered[i] for i in picked)


def read_candidates(uri: str, issues: list[dict[str, str]]) -> list[str]:
    """The ``name`` column of ``track_all_candidates.csv``, each once, in file order."""
    table = read_csv_text(uri, issues)
    require_columns(table, ["name"], uri)
    names = table["name"].str.strip()
    source = os.path.basename(uri)
    for row in names[names.eq("")].index:
        issues.append({"name": "", "problem": f"empty name in data row {row + 1}; skipped", "source": source})
    names = names[names.ne("")]
    for name in names[names.duplicated(keep="first")]:
        issues.append({"name": name, "problem": "duplicate candidate; listed once", "source": source})
    return names.drop_duplicates().tolist()


def require_file(root: str, name: str, key: str, hint: str = "") -> str:
    """The URI of a configured release file; one that does not exist is an error naming key and path."""
    uri = storage.join(root, name)
    if not storage.exists(uri):
        raise ManifestError(f"{key}={name}: file not found: {uri}{hint}")
    return uri


def read_labels(uri: str, issues: list[dict[str, str]]) -> pd.DataFrame:
    """``track1_train_disdim.csv`` with stripped names, each once (a repeated name: the first row, an issue)."""
    labels = read_csv_text(uri, issues)
    require_columns(labels, ["name", "discrete"], uri)
    labels = labels.assign(name=labels["name"].str.strip())
    # Report duplicates here, against the file that has them; finalise() would see one merged row.
    repeated = labels["name"].duplicated(keep="first")
    for name in labels.loc[repeated, "name"]:
        issues.append(
            {
                "name": name,
                "problem": "duplicate name; the first row is kept",
                "source": os.path.basename(uri),
            }
        )
    return labels[~repeated]


def read_subtitles(uri: str, text_column: str, issues: list[dict[str, str]]) -> dict[str, str]:
    """``{name: transcript}`` from ``subtitle_chieng.csv`` (a repeated name: the first row)."""
    subtitles = read_csv_text(uri, issues)
    require_columns(subtitles, ["name", text_column], uri)
    subtitles = subtitles.assign(name=subtitles["name"].str.strip()).drop_duplicates("name", keep="first")
    return dict(zip(subtitles["name"], subtitles[text_column], strict=True))


def split_unlabelled(
    videos: dict[str, str],
    labelled: set[str],
    candidates_uri: str | None,
    unlabeled: object,
    seed: int,
    issues: list[dict[str, str]],
) -> tuple[list[str], list[str], dict[str, int]]:
    """``(test, unlabeled, counts)``: test is the candidates file's names (every unlabelled clip when
    ``candidates_uri`` is None); the other clips are extras, ``unlabeled`` says how many to include."""
    if candidates_uri is None:
        return sorted(set(videos) - labelled), [], {}
    candidates = read_candidates(candidates_uri, issues)
    source = os.path.basename(candidates_uri)
    # The baseline trains on every labelled clip; a labelled candidate stays a training video.
    for name in (n for n in candidates if n in labelled):
        issues.append(
            {
                "name": name,
                "problem": "a labelled clip is also a candidate; kept in train (not in the submission)",
                "source": source,
            }
        )
    test = [n for n in candidates if n not in labelled]
    extras = sorted(set(videos) - labelled - set(candidates))
    included = sample_extras(extras, unlabeled, seed)
    counts = {
        "candidates": len(candidates),
        "candidates_labelled": len(candidates) - len(test),
        "candidates_missing_video": sum(n not in videos for n in test),
        "extra_clips": len(extras),
        "extra_included": len(included),
    }
    return test, included, counts


def manifest_rows(
    labels: pd.DataFrame, test: list[str], included: list[str], text_by_name: dict[str, str]
) -> pd.DataFrame:
    """Labelled names as ``train``, then ``test`` and ``unlabeled``, with their transcripts (no path yet)."""
    valence = (
        pd.to_numeric(labels["valence"], errors="coerce")
        if "valence" in labels
        else pd.Series(float("nan"), index=labels.index)
    )
    unlabelled = {"label": None, "valence": float("nan")}
    rows = pd.concat(
        [
            pd.DataFrame(
                {
                    "video_id": labels["name"],
                    "label": labels["discrete"].map(normalise_label),
                    "split": "train",
                    "valence": valence,
                }
            ),
            pd.DataFrame({"video_id": test, "split": "test", **unlabelled}),
            pd.DataFrame({"video_id": included, "split": "unlabeled", **unlabelled}),
        ],
        ignore_index=True,
    )
    # A clip with no subtitle row has empty text: ASR found no speech, which is not an error.
    rows["text"] = rows["video_id"].map(lambda n: text_by_name.get(n, "")).fillna("")
    return rows


def import_mer2025(
    root: str,
    *,
    video_dir: str = "video",
    labels_file: str = "track1_train_disdim.csv",
    candidates_file: str | None = "track_all_candidates.csv",
    subtitles_file: str = "subtitle_chieng.csv",
    text_column: str = "chinese",
    video_extensions: tuple[str, ...] | list[str] = (".mp4", ".avi"),
    unlabeled: object = "none",
    seed: int = 0,
) -> PrepareResult:
    """The MER2025 release layout as a manifest.

    Labelled names go to ``train``. ``test`` is exactly the names in ``candidates_file`` (the real
    release's ``track_all_candidates.csv``: the clips to predict), a candidate without a video included;
    the other clips are extras, left out unless ``unlabeled`` asks for them (``all`` or a seeded sample
    of N) as split ``unlabeled``, for self-training. ``candidates_file=None`` makes every unlabelled clip
    a test candidate. A configured candidates or subtitles file that does not exist is an error: a typo
    must not turn ~125k clips into test, nor every transcript into empty text.
    """
    issues: list[dict[str, str]] = []
    labels_uri = storage.join(root, labels_file)
    subtitles_uri = require_file(root, subtitles_file, "dataset.subtitles_file")
    candidates_uri = (
        require_file(
            root,
            candidates_file,
            "dataset.candidates_file",
            " (dataset.candidates_file=null makes every unlabelled clip a test candidate)",
        )
        if candidates_file
        else None
    )
    labels = read_labels(labels_uri, issues)
    text_by_name = read_subtitles(subtitles_uri, text_column, issues)
    videos = list_videos(storage.join(root, video_dir), list(video_extensions))

    test, included, counts = split_unlabelled(
        videos, set(labels["name"]), candidates_uri, unlabeled, seed, issues
    )
    rows = manifest_rows(labels, test, included, text_by_name)
    # A name with no clip gets its expected path; finalise() reports it as missing.
    rows["video_path"] = rows["video_id"].map(
        lambda name: videos.get(name, storage.join(root, video_dir, f"{name}.mp4"))
    )
    result = finalise(
        rows[list(SCHEMA.names)],
        issues,
        labels_file,
        keep_missing_video=("test",),
        split_sources={"test": candidates_file} if candidates_file else None,
    )
    result.counts = {
        "labelled": len(labels),
        **counts,
        "left_out": len(set(videos) - set(result.manifest["video_id"])),
    }
    return result


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
    result = finalise(rows[list(SCHEMA.names)], issues, os.path.basename(str(uri)))
    result.counts = {"left_out": len(rows) - len(result.manifest)}
    return result
