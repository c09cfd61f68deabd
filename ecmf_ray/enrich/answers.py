"""Validation of LLM answers and precomputed rows: strict JSON, a label among the six classes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ecmf_ray.labels import EMOTIONS

# Chat models often wrap JSON in a markdown fence even when told not to; that alone is not an error.
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """The fields of one valid answer, or ``error`` (and no fields) for an invalid one."""

    label: str | None = None
    keywords: str | None = None
    description: str | None = None
    error: str | None = None


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


def parse_answer(raw: str) -> Answer:
    """Parse a model's answer: a JSON object with ``label`` and optional ``keywords``, ``description``."""
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return Answer(error=f"answer is not valid JSON: {err}")
    if not isinstance(obj, dict):
        return Answer(error=f"answer is JSON but not an object: {type(obj).__name__}")
    try:
        return Answer(
            label=check_label(obj.get("label")),
            keywords=join_keywords(obj.get("keywords")),
            description=_optional_text(obj.get("description"), "description"),
        )
    except ValueError as err:
        return Answer(error=f"invalid answer: {err}")
