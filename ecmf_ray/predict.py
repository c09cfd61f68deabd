"""The ``predict`` job: label new clips with a finished run's ensemble.

``ecmf predict --config … run_dir=RUN predict.manifest=NEW.csv`` (or ``predict.videos=FOLDER`` with an
optional ``predict.subtitles`` CSV):

1. reads the new clips into a manifest under ``RUN/predict/<name>/`` (``name``: ``predict.name``, or the
   manifest's or folder's name), keeping a row for every input clip;
2. extracts their features there with the extract job's own code, after checking that the current
   config extracts exactly as ``RUN/features/spec.json`` records (the same models, layers, frames and
   face settings); an interrupted run resumes, like ``ecmf extract``;
3. runs every fold model of every ensemble member that ``RUN/final/ensemble.json`` lists (its
   standardiser first), averages each member's probabilities over its folds, and takes the members'
   majority vote (:func:`ecmf_ray.finalize.vote.ensemble_vote`, ties by the mean probability), exactly as
   finalize votes on the run's own test videos;
4. writes ``predict.output`` (default ``RUN/predict/<name>/predictions.csv``, so each input keeps its
   own): ``name, discrete, prob_<class>…, error``, one row per input clip, in input order.

A clip missing some branches is predicted from the rest (the presence mask, as in training). A clip with
no usable branch (every extraction failed) is labelled as finalize labels it in the submission, which must
name a class for every test clip: every model sees each branch at its training mean (a blank input), and
``error`` says that the clip had no usable features. An input row that names no readable clip (a missing
video file) gets no class: empty ``discrete`` and probabilities, and ``error`` saying why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ecmf_ray import storage
from ecmf_ray.data import manifest as mf
from ecmf_ray.data.mer2025 import import_manifest, list_videos, read_csv_text
from ecmf_ray.features import branch_dir, errors_path, load_branch
from ecmf_ray.finalize.experiments import with_overrides
from ecmf_ray.finalize.job import ensemble_path
from ecmf_ray.finalize.vote import ensemble_vote
from ecmf_ray.freshness import changed_keys, read_record
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.train.data import align_branch
from ecmf_ray.train.outputs import PROB_COLUMNS, checkpoint_path, load_fold_model
from ecmf_ray.train.standardize import apply_standardizer

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["name", "discrete", *PROB_COLUMNS, "error"]


def predict_dir(run_dir: str, name: str) -> str:
    return storage.join(run_dir, "predict", name)


# ------------------------------------------------------------------------------------------ the input


def read_videos_folder(
    folder: str, subtitles: str | None, text_column: str, extensions: list[str]
) -> mf.PrepareResult:
    """A manifest of every clip in ``folder``; its text from ``subtitles`` (``name, <text_column>``), if given."""
    issues: list[dict[str, str]] = []
    videos = list_videos(folder, extensions)
    if not videos:
        raise mf.ManifestError(f"{folder}: no video files ({', '.join(extensions)})")
    text: dict[str, str] = {}
    if subtitles:
        table = read_csv_text(subtitles, issues)
        mf.require_columns(table, ["name", text_column], subtitles)
        names = table["name"].str.strip()
        text = dict(zip(names, table[text_column].fillna(""), strict=True))
    names = sorted(videos)
    rows = pd.DataFrame(
        {
            "video_id": names,
            "video_path": [videos[n] for n in names],
            "text": [text.get(n, "") for n in names],
            "label": None,
            "split": "test",
            "valence": float("nan"),
        }
    )
    return mf.finalise(rows, issues, os.path.basename(str(folder).rstrip("/")))


def read_new_clips(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(manifest, rejected)``: the clips to extract (split ``test``), and ``name, error`` for input rows
    that cannot be (a missing video file, a bad split), one per name."""
    p = cfg.predict
    if bool(p.manifest) == bool(p.videos):
        raise ValueError(
            "give exactly one of predict.manifest (a manifest CSV or Parquet) and predict.videos (a folder)"
        )
    if p.manifest:
        result = import_manifest(str(p.manifest))
    else:
        result = read_videos_folder(
            str(p.videos), p.subtitles, str(cfg.dataset.text_column), list(cfg.dataset.video_extensions)
        )
    manifest = result.manifest.assign(split="test")
    issues = result.issues_frame()
    rejected = issues[issues["name"].ne("") & ~issues["name"].isin(manifest["video_id"])]
    rejected = rejected.drop_duplicates("name").rename(columns={"problem": "error"})[["name", "error"]]
    return manifest, rejected.reset_index(drop=True)


def input_name(cfg: DictConfig) -> str:
    """The folder name under ``RUN/predict/``: ``predict.name``, else the input's own name."""
    if cfg.predict.name:
        return str(cfg.predict.name)
    source = str(cfg.predict.manifest or cfg.predict.videos).rstrip("/")
    return os.path.splitext(os.path.basename(source))[0]


# ---------------------------------------------------------------------------------------- the features


def check_feature_spec(cfg: DictConfig, run_dir: str) -> None:
    """Refuse unless the current config extracts features exactly as the run's own were extracted."""
    from ecmf_ray.extract.spec import feature_spec, spec_path

    recorded = read_record(spec_path(run_dir))
    if recorded is None:
        raise FileNotFoundError(f"{spec_path(run_dir)} not found: {run_dir} has no extracted features")
    changed = changed_keys(recorded, feature_spec(cfg))
    if changed:
        raise ValueError(
            f"this config would extract features differently from {spec_path(run_dir)} (changed: "
            f"{', '.join(changed)}); predict with the config the run was made with "
            f"({storage.join(run_dir, 'config', 'extract.yaml')})"
        )
    if recorded.get("text", {}).get("source") == "enriched":
        raise ValueError(
            f"{run_dir}'s text features encode LLM-enriched text, which `ecmf predict` cannot make for new "
            "clips yet; use a run trained with enrich.enabled=false"
        )


def extract_features(cfg: DictConfig, folder: str, manifest: pd.DataFrame) -> None:
    """The extract job on the new clips, writing ``folder/features/`` (resumes like ``ecmf extract``)."""
    from ecmf_ray.extract.pipeline import run_extract

    mf.write_manifest(manifest, mf.manifest_path(folder))
    run_extract(with_overrides(cfg, [f"run_dir={folder}"], "predict"))


def failure_messages(folder: str) -> pd.Series:
    """video_id -> its extraction errors, one ``branch: stage ErrorType`` per failed branch."""
    uri = errors_path(folder)
    if not storage.exists(uri):
        return pd.Series(dtype=object)
    errors = storage.read_table(uri).to_pandas()
    text = errors["branch"] + ": " + errors["stage"] + " " + errors["error_type"]
    return text.groupby(errors["video_id"]).agg("; ".join)


# ----------------------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class Member:
    """An ensemble member: its name and the experiment folder holding its fold checkpoints."""

    name: str
    experiment_dir: str


def read_members(run_dir: str) -> list[Member]:
    """The ensemble finalize recorded in ``final/ensemble.json``."""
    record = read_record(ensemble_path(run_dir))
    if record is None:
        raise FileNotFoundError(f"{ensemble_path(run_dir)} not found: run `ecmf finalize` on {run_dir} first")
    return [Member(m["name"], m["experiment_dir"]) for m in record["members"]]


def fold_checkpoints(exp_dir: str) -> list[str]:
    folds = int(read_record(storage.join(exp_dir, "metrics.json"))["folds"])
    return [checkpoint_path(exp_dir, k) for k in range(folds)]


class ClipFeatures:
    """The new clips' features per branch, ``(features, present)`` aligned with ``ids``, read once each."""

    def __init__(self, folder: str, ids: pd.Index) -> None:
        self.folder, self.ids = folder, ids
        self._branches: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getitem__(self, branch: str) -> tuple[np.ndarray, np.ndarray]:
        if branch not in self._branches:
            if not storage.exists(branch_dir(self.folder, branch)):
                raise ValueError(
                    f"the ensemble uses branch '{branch}', which was not extracted (extract.branches)"
                )
            self._branches[branch] = align_branch(self.ids, *load_branch(self.folder, branch))
        return self._branches[branch]


def branch_matrix(branch: tuple[np.ndarray, np.ndarray], dim: int) -> np.ndarray:
    """A branch's ``(N, dim)`` features; zeros when no clip has it (its feature table is empty)."""
    x, present = branch
    return x if present.any() else np.zeros((len(present), dim), np.float32)


@torch.no_grad()
def member_probabilities(exp_dir: str, inputs: ClipFeatures) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, classes), usable (N,))``: the mean over the member's fold models, and which
    clips have at least one of its branches (the others are predicted from a blank input, as in training)."""
    total: np.ndarray | None = None
    usable = None
    checkpoints = fold_checkpoints(exp_dir)
    for uri in checkpoints:
        model, standardizers, meta = load_fold_model(uri)
        branches = list(meta["branches"])
        present = np.stack([inputs[b][1] for b in branches], axis=1)
        features = [
            torch.from_numpy(
                apply_standardizer(branch_matrix(inputs[b], dim), *standardizers[b], present[:, i])
            )
            for i, (b, dim) in enumerate(zip(branches, meta["dims"], strict=True))
        ]
        usable = present.any(axis=1)
        probs = torch.softmax(model(features, torch.from_numpy(present)), dim=1).numpy().astype(np.float64)
        total = probs if total is None else total + probs
    assert total is not None and usable is not None
    return total / len(checkpoints), usable


def vote_members(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(class index, mean probabilities)`` per clip from ``(members, N, classes)`` probabilities: the
    members' majority vote, ties by the mean probability, as :func:`ecmf_ray.finalize.ensemble.vote`."""
    return ensemble_vote(probabilities.argmax(axis=2).T, probabilities), probabilities.mean(axis=0)


def predictions_table(
    ids: list[str],
    classes: np.ndarray,
    probabilities: np.ndarray,
    unusable: pd.Series,
    rejected: pd.DataFrame,
) -> pd.DataFrame:
    """One row per clip: ``name, discrete, prob_<class>…, error``.

    ``unusable``: name -> why, for the clips no member had a branch of (labelled all the same);
    ``rejected``: ``name, error`` for the input rows that name no clip (no class).
    """
    names = np.array(EMOTIONS, dtype=object)
    table = pd.DataFrame(probabilities, columns=PROB_COLUMNS)
    table.insert(0, "name", ids)
    table.insert(1, "discrete", names[classes])
    why = pd.Series(ids).map(unusable)
    table["error"] = np.where(why.notna(), "no usable features: " + why.astype(str), None)
    return pd.concat([table, rejected.reindex(columns=OUTPUT_COLUMNS)], ignore_index=True)[OUTPUT_COLUMNS]


def run_predict(cfg: DictConfig) -> dict:
    """Extract the new clips' features with the run's spec, run the ensemble, and write the predictions.

    Needs a Ray session (:func:`ecmf_ray.runtime.init_ray`) for the extraction.
    """
    run_dir = storage.resolve(cfg.run_dir, os.getcwd())
    given = cfg.predict.output  # before run_dir changes below (it may interpolate ${run_dir})
    cfg = with_overrides(cfg, [f"run_dir={run_dir}"], "predict")
    members = read_members(run_dir)
    check_feature_spec(cfg, run_dir)
    manifest, rejected = read_new_clips(cfg)
    folder = predict_dir(run_dir, input_name(cfg))
    output = str(given) if given else storage.join(folder, "predictions.csv")
    ids = pd.Index(manifest["video_id"].astype(str))
    classes, mean, unusable = np.zeros(0, np.int64), np.zeros((0, len(EMOTIONS))), pd.Series(dtype=object)
    if len(manifest):
        extract_features(cfg, folder, manifest)
        inputs = ClipFeatures(folder, ids)
        per_member = [member_probabilities(m.experiment_dir, inputs) for m in members]
        classes, mean = vote_members(np.stack([p for p, _ in per_member]))
        blank = ~np.stack([u for _, u in per_member]).any(axis=0)
        unusable = failure_messages(folder).reindex(ids[blank]).fillna("no features extracted")
    table = predictions_table(list(ids), classes, mean, unusable, rejected)
    storage.write_csv(table, output)
    errored = int(table["discrete"].isna().sum())
    print(
        f"predict: {len(table) - errored} clips labelled ({len(unusable)} of them with no usable features, "
        f"from a blank input), {errored} input rows with errors -> {output}"
    )
    return {
        "output": output,
        "clips": len(table),
        "errors": errored,
        "unusable": len(unusable),
        "members": [m.name for m in members],
    }
