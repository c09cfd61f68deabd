"""A person's review decisions: ``${run_dir}/final/reviewed.csv`` (``video_id, label, decided_at``).

The file is what ``finalize.relabel.reviewed`` reads. A label is one of the six classes or ``unusable``
(the clip is left out of training); an empty label is no decision. Each decision rewrites the whole file
atomically (a local temporary file renamed over it, or one object-store PUT), so a reader never sees half
of it; a clip decided again keeps its one row, with the later label and time.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Collection
from datetime import datetime, timezone

import pandas as pd
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.finalize.experiments import with_overrides
from ecmf_ray.labels import EXCLUDED, LABEL_CHOICES

logger = logging.getLogger(__name__)

CHOICES = LABEL_CHOICES  # a reviewer picks what a label table may hold
COLUMNS = ["video_id", "label", "decided_at"]


class DecisionError(ValueError):
    """A decision that cannot be recorded (an unknown label or clip); never written."""


def reviewed_path(run_dir: str) -> str:
    return storage.join(run_dir, "final", "reviewed.csv")


def read_decision_table(uri: str) -> pd.DataFrame:
    """The decisions in ``uri`` (``video_id, label`` and optionally ``decided_at``), one row per clip.

    Empty labels are skipped. A clip listed twice keeps its later decision (by ``decided_at`` where
    given, else the later row). A label outside :data:`CHOICES` is an error naming the row.
    """
    with storage.open_file(uri, "rb") as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    missing = [c for c in ("video_id", "label") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{uri}: missing column(s) {', '.join(missing)}; the columns are {', '.join(COLUMNS)}"
        )
    df = df.reindex(columns=COLUMNS, fill_value="")
    df["video_id"] = df["video_id"].str.strip()
    df["label"] = df["label"].str.strip()
    bad = df.index[~df["label"].isin(CHOICES) & df["label"].ne("")]
    if len(bad):
        row = bad[0]
        raise ValueError(
            f"{uri}: row {row + 1} ({df.at[row, 'video_id']}): '{df.at[row, 'label']}' is not one of "
            f"{', '.join(CHOICES)}"
        )
    decided = df[df["label"].ne("")].sort_values("decided_at", kind="stable")
    return decided.drop_duplicates("video_id", keep="last").reset_index(drop=True)


def reviewed_labels(uri: str) -> pd.Series:
    """video_id -> class of a reviewed table, for finalize, or :data:`~ecmf_ray.labels.EXCLUDED` for a
    clip marked unusable: every model finalize trains on the refined labels leaves it out."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: no such review decisions file")
    table = read_decision_table(uri)
    unusable = table["video_id"][table["label"].eq(EXCLUDED)]
    if len(unusable):
        logger.info(
            "%s: %d clip(s) marked unusable (e.g. %s) are left out of training on the refined labels",
            uri, len(unusable), unusable.iloc[0],
        )  # fmt: skip
    return pd.Series(table["label"].to_numpy(), index=table["video_id"].to_numpy(), name="label")


def with_review_decisions(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``finalize.relabel.reviewed`` set to the run's ``final/reviewed.csv`` when that file
    exists and no other table is named (how ``ecmf pipeline`` picks up ``ecmf review``'s decisions)."""
    uri = reviewed_path(str(cfg.run_dir))
    if cfg.finalize.relabel.reviewed or not storage.exists(uri):
        return cfg
    print(f"pipeline: finalize applies the review decisions in {uri}")
    return with_overrides(cfg, [f"finalize.relabel.reviewed={uri}"], "review")


class DecisionStore:
    """The decisions file of one run, read again on every call (another tab, or server, may have written).

    ``known``: the clips a decision may name.
    """

    def __init__(self, uri: str, known: Collection[str]) -> None:
        self.uri = uri
        self.known = set(known)
        self._lock = threading.Lock()

    def decisions(self) -> pd.DataFrame:
        """Every decision so far (``video_id, label, decided_at``), one row per clip."""
        if not storage.exists(self.uri):
            return pd.DataFrame(columns=COLUMNS)
        return read_decision_table(self.uri)

    def decide(self, video_id: str, label: str) -> dict[str, str]:
        """Record ``label`` for ``video_id`` (replacing an earlier decision); the row written."""
        if label not in CHOICES:
            raise DecisionError(f"'{label}' is not a label; one of {', '.join(CHOICES)}")
        if video_id not in self.known:
            raise DecisionError(f"'{video_id}' is not a clip under review")
        row = {
            "video_id": video_id,
            "label": label,
            "decided_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        }
        with self._lock:
            table = self.decisions()
            table = pd.concat([table[table["video_id"].ne(video_id)], pd.DataFrame([row])], ignore_index=True)
            buf = io.StringIO()
            table[COLUMNS].to_csv(buf, index=False)
            storage.write_text(self.uri, buf.getvalue())
        logger.info("review: %s -> %s", video_id, label)
        return row
