"""Validation of LLM answers and precomputed rows: strict JSON, a label among the six classes.

An answer the model stopped at its token budget (``finish_reason: length``) is parsed leniently with
jiter's partial mode: the fields it completed are kept, a string or value cut in the middle is not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jiter

from ecmf_ray.labels import EMOTIONS

# Chat models often wrap JSON in a markdown fence even when told not to; that alone is not an error.
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
# A cut answer has lost its closing fence, if it had one.
_OPENING_FENCE = re.compile(r"^```(?:json)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """The fields of one valid answer, or ``error`` (and no fields) for an invalid one.

    ``truncated``: the model stopped at its token budget; the fields are those it completed.
    """

    label: str | None = None
    keywords: str | None = None
    description: str | None = None
    error: str | None = None
    truncated: bool = False


def check_label(value: Any) -> str:
    """``value`` as one of the six class names (case and spaces ignored); ValueError otherwise."""
    label = str(value).strip().lower() if isinstance(value, str) else None
    if label not in EMOTIONS:
        raise ValueError(f"label {value!r} is not one of {', '.join(EMOTIONS)}")
    return label


def join_keywords(value: Any) -> str:
    """Keywords as one comma-separated string, from a list of strings or a string."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(k, str) for k in value):
        return ", ".join(k.strip() for k in value if k.strip())
    raise ValueError(f"keywords must be a list of strings or a string, not {value!r}")


def _optional_text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {value!r}")
    return value.strip()


def _fields(obj: dict[str, Any], truncated: bool) -> Answer:
    """Checked fields of a parsed answer; a cut answer may lack any of them (the label too)."""
    if truncated and not obj:
        return Answer(error="answer cut at max_tokens before any field was complete", truncated=True)
    label = obj.get("label")
    try:
        return Answer(
            label=None if truncated and label is None else check_label(label),
            keywords=join_keywords(obj.get("keywords")),
            description=_optional_text(obj.get("description"), "description"),
            truncated=truncated,
        )
    except ValueError as err:
        return Answer(error=f"invalid answer: {err}", truncated=truncated)


def parse_answer(raw: str, truncated: bool = False) -> Answer:
    """Parse a model's answer: a JSON object with ``label`` and optional ``keywords``, ``description``.

    ``truncated``: the answer was cut at the token budget; keep the fields it completed.
    """
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    elif truncated:
        text = _OPENING_FENCE.sub("", text)
    try:
        obj = jiter.from_json(text.encode("utf-8"), partial_mode=True) if truncated else json.loads(text)
    except ValueError as err:  # json.JSONDecodeError is a ValueError, as are jiter's errors
        return Answer(error=f"answer is not valid JSON: {err}", truncated=truncated)
    if not isinstance(obj, dict):
        return Answer(error=f"answer is JSON but not an object: {type(obj).__name__}", truncated=truncated)
    return _fields(obj, truncated)
