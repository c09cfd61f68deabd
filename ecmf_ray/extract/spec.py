"""What the features are made from: the feature spec per branch, and each video's inputs.

``features/spec.json`` records, per branch, the settings its consolidated features were extracted with
(``{branch: spec}``); ``features/inputs.parquet`` a hash per video of its video path and text. Steps
downstream identify their data by both (:func:`data_digest`), so a branch extracted again differently
makes them stale.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from ecmf_ray import features, storage
from ecmf_ray.enrich.sources import resolve_sources
from ecmf_ray.enrich.text import enriched_texts
from ecmf_ray.extract.sources import check_sources
from ecmf_ray.freshness import changed_keys, digest, manifest_digest, read_record

SHORT_HASH = 8  # characters of a spec digest in a retired branch folder's name: features/<branch>.<hash>/


def spec_path(run_dir: str) -> str:
    return storage.join(features.features_dir(run_dir), "spec.json")


def inputs_path(run_dir: str) -> str:
    """Per video, a hash of what was extracted from it (its video path and the text the text branch encodes)."""
    return storage.join(features.features_dir(run_dir), "inputs.parquet")


def text_source(cfg: Any) -> dict[str, Any]:
    """What the text branch encodes: the transcript, or the enrichment template, its switches and the
    LLM sources it draws on (name, backend, model or file, media and its limits, fields)."""
    if not cfg.enrich.enabled:
        return {"source": "transcript"}
    keys = ("text_template", "template_separator", "use_label", "use_keywords", "use_description")
    sources = [s.spec() for s in resolve_sources(cfg.enrich)]
    return {"source": "enriched", **{k: OmegaConf.to_object(cfg.enrich)[k] for k in keys}, "sources": sources}


def feature_spec(cfg: Any) -> dict[str, Any]:
    """Per configured branch, everything that determines its feature values (not batch or pool sizes).

    A branch whose spec changes is extracted again alone; the others are kept.
    """
    check_sources(cfg.extract)  # a bad face or audio source fails here, before any clip is decoded
    e = OmegaConf.to_object(cfg.extract)
    clip = {"model": str(cfg.models.clip), "layers": e["clip"]["output"], "dtype": e["clip"]["dtype"]}
    spec: dict[str, Any] = {
        "frame": {**clip, "pooling": e["clip"]["pooling"], "frames": e["frames"]},
        "face": {**clip, "pooling": e["clip"]["pooling"], "frames": e["frames"], "faces": e["faces"]},
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
    # plain JSON types, so a reread compares equal
    return json.loads(json.dumps({b: spec[b] for b in e["branches"]}))


def branch_digests(spec: dict[str, Any]) -> dict[str, str]:
    """branch -> the digest of its spec (what the journal records per shard)."""
    return {branch: digest(branch_spec) for branch, branch_spec in spec.items()}


def read_spec(run_dir: str) -> dict[str, Any]:
    """The recorded spec per branch of the consolidated features (empty when none)."""
    return read_record(spec_path(run_dir)) or {}


def changed_branches(recorded: dict[str, Any], wanted: dict[str, Any]) -> dict[str, list[str]]:
    """branch -> the spec keys that changed, for each wanted branch recorded with other settings."""
    return {
        b: changed_keys(recorded[b], wanted[b]) or ["(all)"]
        for b in wanted
        if b in recorded and recorded[b] != wanted[b]
    }


def data_digest(run_dir: str) -> str:
    """The training data's identity: the manifest and the spec of every branch's features.

    Experiments record it, so a model trained on other features or another manifest is never reused.
    """
    return digest({"manifest": manifest_digest(run_dir), "spec": read_record(spec_path(run_dir))})


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
