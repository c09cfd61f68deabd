"""What a step's outputs were made from, so that a rerun can tell current outputs from stale ones.

Every step records the settings and inputs its outputs came from next to those outputs, and owns a
``current(cfg) -> None | reason`` check beside its code: ``None`` when its outputs exist and were made
from what the config asks for now, else a one-line reason to run it. A step that cannot redo stale
outputs in place (extract, train, tune) refuses when it runs, naming what changed and how to proceed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from ecmf_ray import storage
from ecmf_ray.data.manifest import manifest_path, read_manifest


def digest(value: Any) -> str:
    """A short content hash of a JSON-able value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def changed_keys(recorded: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (a non-mapping differs as a whole)."""
    if not (isinstance(recorded, dict) and isinstance(wanted, dict)):
        return [] if recorded == wanted else [prefix or "(all)"]
    keys = sorted(set(recorded) | set(wanted), key=str)
    out: list[str] = []
    for key in keys:
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in recorded or key not in wanted:
            out.append(name)
        else:
            out.extend(changed_keys(recorded[key], wanted[key], name))
    return out


def read_record(uri: str) -> dict[str, Any] | None:
    """A JSON record, or None when there is none."""
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def write_record(uri: str, record: dict[str, Any]) -> None:
    storage.write_text(uri, json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False, default=str))


def stale_reason(what: str, recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """``None`` when ``recorded`` equals ``wanted``; else a reason naming the keys that changed."""
    if recorded is None:
        return f"{what} records no settings"
    changed = changed_keys(recorded, json.loads(json.dumps(wanted, default=str)))
    return f"{what} was made with other settings (changed: {', '.join(changed)})" if changed else None


def manifest_digest(run_dir: str) -> str:
    """The manifest's identity: every row's id, video, text, label and split."""
    columns = ["video_id", "video_path", "text", "label", "split"]
    manifest = read_manifest(manifest_path(run_dir))[columns].astype(str)
    return hashlib.sha1(pd.util.hash_pandas_object(manifest, index=False).to_numpy().tobytes()).hexdigest()[
        :16
    ]
