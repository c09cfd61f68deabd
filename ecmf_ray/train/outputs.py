"""The files of a training experiment, ``${run_dir}/train/<experiment>/``.

================================  ===============================================================
metrics.json                      cv_waf / cv_accuracy (mean, std over folds), per-fold scores,
                                  pooled out-of-fold WAF, per-class F1, confusion matrix
oof.parquet                       video_id, fold, prob_<class> x6, predicted, label
test_pred.parquet                 video_id, split, prob_<class> x6 (mean over folds), predicted
checkpoints/fold<k>.safetensors   best epoch's weights (``model.*``) and the fold's standardiser
                                  (``standardizer.<branch>.mean|std``); metadata: model config,
                                  branches, dims, classes, fold, best_epoch, waf
folds/fold<k>/                    result.json (scores, history, start/end time, checkpoint bytes) and
                                  predictions.parquet per fold; while the fold trains, the best epoch's
                                  weights so far (best-epoch<N>.safetensors, which resume needs)
ray/                              Ray Tune / Ray Train state and resume checkpoints (model + optimizer)
================================  ===============================================================
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from torch import nn

from ecmf_ray import storage
from ecmf_ray.labels import EMOTIONS
from ecmf_ray.models import build_model
from ecmf_ray.train.checkpoint import load_tensors, prefixed, save_tensors
from ecmf_ray.train.data import FeatureSet
from ecmf_ray.train.loop import FoldRun
from ecmf_ray.train.metrics import cv_summary

PROB_COLUMNS = [f"prob_{name}" for name in EMOTIONS]


def experiment_dir(run_dir: str, experiment: str) -> str:
    return storage.join(run_dir, "train", experiment)


def fold_dir(exp_dir: str, fold: int) -> str:
    return storage.join(exp_dir, "folds", f"fold{fold}")


def checkpoint_path(exp_dir: str, fold: int) -> str:
    return storage.join(exp_dir, "checkpoints", f"fold{fold}.safetensors")


def fold_done(exp_dir: str, fold: int) -> bool:
    return storage.exists(storage.join(fold_dir(exp_dir, fold), "result.json"))


def write_fold(exp_dir: str, run: FoldRun, data: FeatureSet, record: dict | None = None) -> None:
    """A finished fold's best model, its held-out and test predictions, and its scores.

    ``record``: what the run that finished the fold adds to result.json (``resumed_from_epoch``,
    ``started_at`` / ``finished_at`` in ISO 8601 UTC, ``checkpoints``: reports and bytes written for resume).
    result.json goes last: its
    presence marks the fold as complete.
    """
    run.use_best()
    save_tensors(checkpoint_path(exp_dir, run.fold), *run.export())
    rows = np.concatenate([run.val_rows, data.predict_rows()])
    predictions = pd.DataFrame(run.predict(rows), columns=PROB_COLUMNS)
    predictions.insert(0, "video_id", data.video_ids[rows].astype(str))
    predictions.insert(1, "role", ["val"] * len(run.val_rows) + ["predict"] * (len(rows) - len(run.val_rows)))
    storage.write_table(predictions, storage.join(fold_dir(exp_dir, run.fold), "predictions.parquet"))
    result = {
        **run.summary(),
        "n_train": len(run.train_rows),
        "n_val": len(run.val_rows),
        **(record or {}),
        "history": run.history,
    }
    storage.write_text(storage.join(fold_dir(exp_dir, run.fold), "result.json"), json.dumps(result, indent=1))


def load_fold_model(uri: str) -> tuple[nn.Module, dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """A fold's best model (eval mode), its standardiser per branch, and the file's metadata."""
    tensors, meta = load_tensors(uri)
    model = build_model(meta["model"], meta["dims"], len(meta["classes"]))
    model.load_state_dict(prefixed(tensors, "model"))
    standardizers = {
        b: (tensors[f"standardizer.{b}.mean"].numpy(), tensors[f"standardizer.{b}.std"].numpy())
        for b in meta["branches"]
    }
    return model.eval(), standardizers, meta


def read_fold(exp_dir: str, fold: int) -> tuple[dict, pd.DataFrame]:
    result = json.loads(storage.read_text(storage.join(fold_dir(exp_dir, fold), "result.json")))
    predictions = storage.read_table(storage.join(fold_dir(exp_dir, fold), "predictions.parquet")).to_pandas()
    return result, predictions


def assemble(
    data: FeatureSet, folds: list[tuple[dict, pd.DataFrame]]
) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """``(metrics, oof, test_pred)`` from every fold's result and predictions."""
    names = np.array(EMOTIONS, dtype=object)
    oof = pd.concat(
        [preds[preds["role"].eq("val")].assign(fold=result["fold"]) for result, preds in folds]
    ).drop(columns="role")
    order = pd.Series(np.arange(len(data.video_ids)), index=data.video_ids)
    oof = oof.iloc[np.argsort(order[oof["video_id"]].to_numpy(), kind="stable")].reset_index(drop=True)
    y_true = data.labels[order[oof["video_id"]].to_numpy()]
    y_pred = oof[PROB_COLUMNS].to_numpy().argmax(axis=1)
    oof = oof[["video_id", "fold", *PROB_COLUMNS]].assign(predicted=names[y_pred], label=names[y_true])

    test = pd.concat([preds[preds["role"].eq("predict")] for _, preds in folds])
    test = test.groupby("video_id", sort=False)[PROB_COLUMNS].mean()
    rows = data.predict_rows()
    test = test.reindex(data.video_ids[rows]).rename_axis("video_id").reset_index()
    test.insert(1, "split", data.split[rows])
    test["predicted"] = names[test[PROB_COLUMNS].to_numpy().argmax(axis=1)] if len(test) else []

    per_fold = [{k: v for k, v in result.items() if k != "history"} for result, _ in folds]
    return cv_summary(per_fold, y_true, y_pred), oof, test


def training_span(results: list[dict]) -> dict[str, str | None]:
    """``started_at`` of the first fold to start and ``finished_at`` of the last to finish (ISO 8601 UTC)."""
    starts = [r["started_at"] for r in results if r.get("started_at")]
    ends = [r["finished_at"] for r in results if r.get("finished_at")]
    return {"started_at": min(starts, default=None), "finished_at": max(ends, default=None)}


def write_experiment(exp_dir: str, data: FeatureSet, extra: dict | None = None) -> dict:
    """Collect every fold under ``exp_dir`` and write metrics.json, oof.parquet and test_pred.parquet."""
    folds = [read_fold(exp_dir, fold) for fold in range(data.n_folds)]
    metrics, oof, test = assemble(data, folds)
    metrics = {
        **(extra or {}),
        "folds": data.n_folds,
        **training_span([result for result, _ in folds]),
        **metrics,
    }
    storage.write_table(oof, storage.join(exp_dir, "oof.parquet"))
    storage.write_table(test, storage.join(exp_dir, "test_pred.parquet"))
    storage.write_text(storage.join(exp_dir, "metrics.json"), json.dumps(metrics, indent=1))
    return metrics
