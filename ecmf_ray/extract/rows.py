"""The columns a batch carries between extraction stages, and how a failure rides along with its row.

Batches are ``dict[str, np.ndarray]`` (Ray Data's numpy format), one row per video. A failed branch never
raises: its ``error_<branch>`` cell gets a JSON record, its feature is NaN, and later stages skip it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

# Where a branch can fail, in pipeline order.
STAGES: tuple[str, ...] = ("open", "decode_video", "decode_audio", "faces", "clip", "hubert", "roberta")
VISUAL_BRANCHES: tuple[str, ...] = ("frame", "face")
# Branches whose input comes from the release's own file or from the video (see extract/sources.py).
SOURCED_BRANCHES: tuple[str, ...] = ("face", "audio")
_MESSAGE_CHARS = 500


def error_column(branch: str) -> str:
    return f"error_{branch}"


def feature_column(branch: str) -> str:
    return f"{branch}_feature"


def count_column(branch: str) -> str:
    """Frames, windows or tokens pooled into the branch's vector."""
    return f"{branch}_n"


def source_column(branch: str) -> str:
    """Where the row's input came from (face: openface | detect; audio: wav | video; "" if it failed)."""
    return f"{branch}_source"


def error_cell(stage: str, err: BaseException) -> str:
    """One failure as the JSON text stored in an ``error_<branch>`` cell."""
    message = str(err) or repr(err)
    return json.dumps({"stage": stage, "error_type": type(err).__name__, "message": message[:_MESSAGE_CHARS]})


def parse_error_cell(cell: str) -> dict[str, str] | None:
    return json.loads(cell) if cell else None


def empty_errors(n: int, branches: Iterable[str]) -> dict[str, np.ndarray]:
    return {error_column(b): np.full(n, "", dtype=object) for b in branches}


def ok_rows(batch: dict[str, np.ndarray], branch: str) -> np.ndarray:
    """Row indices where ``branch`` has not failed yet."""
    return np.flatnonzero(batch[error_column(branch)] == "")
