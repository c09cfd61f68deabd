"""One fold's training in plain PyTorch, one epoch per :meth:`FoldRun.step`.

Everything random is re-seeded from ``(seed, fold, epoch)`` at the start of each epoch, so a
fold gives the same numbers whether it runs alone, beside other folds, or resumes from a
checkpoint. Callers drive the epochs: a Ray Train worker (:mod:`ecmf_ray.train.distributed`)
checkpoints between steps; a Tune trial can build all K runs and call :func:`step_folds` to
advance them in lockstep and report the mean held-out WAF per epoch.

Best-epoch selection (``train.select_epoch``): ``fold`` picks the epoch with the best WAF on the
held-out fold itself, as the MER2025 baselines and the paper do, so the fold's reported WAF is the
maximum over epochs of the very score it reports (optimistic). ``inner`` holds out a seeded,
stratified part of the training fold (1/(K-1) of it, the size of one outer fold), picks the epoch on
it, and reports the held-out fold's WAF at that epoch (unbiased); the fold-selected maximum is kept
beside it (``fold_selected_waf``), so both numbers exist for the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecmf_ray.labels import EMOTIONS
from ecmf_ray.models import build_model
from ecmf_ray.train.checkpoint import flatten_optimizer, prefixed, unflatten_optimizer
from ecmf_ray.train.data import FeatureSet
from ecmf_ray.train.folds import assign_folds
from ecmf_ray.train.metrics import accuracy, waf
from ecmf_ray.train.standardize import apply_standardizer, fit_standardizer, identity_standardizer

_EVAL_BATCH = 4096
FOLD_FORMAT = "ecmf_ray.fold/1"
SELECT_EPOCH = ("fold", "inner")


def seed_for(*parts: int) -> int:
    """A 32-bit seed derived from several integers (seed, fold, epoch, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_batches(n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """Shuffled mini-batches of ``range(n)`` for one rank.

    With several ranks the permutation is padded by wrapping around (as DistributedSampler does)
    so every rank runs the same number of steps.
    """
    order = np.random.default_rng(seed).permutation(n)
    if world_size > 1:
        order = np.resize(order, -(-n // world_size) * world_size)[rank::world_size]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def inner_selection_rows(data: FeatureSet, fold: int, seed: int) -> np.ndarray:
    """Rows of fold ``fold``'s training part held out to select the epoch (``select_epoch: inner``).

    A stratified 1/(K-1) of the training fold's manifest-labelled rows (at least half of it when K=2),
    seeded by ``(seed, fold)``; training-only (pseudo-labelled) rows are never among them.
    """
    candidates = (data.folds >= 0) & (data.folds != fold)
    labels = np.where(candidates, data.labels, -1)
    inner = assign_folds(labels, max(2, data.n_folds - 1), seed_for(seed, fold, 2))
    return np.flatnonzero(inner == 0)


def set_torch_threads(num_threads: int) -> None:
    """Use exactly the CPUs reserved for this process (torch defaults to every core on the node)."""
    torch.set_num_threads(max(1, int(num_threads)))


class FoldRun:
    """Model, optimizer, standardiser and best-epoch bookkeeping of one cross-validation fold."""

    def __init__(
        self,
        data: FeatureSet,
        fold: int,
        model_cfg: Mapping[str, Any],
        train_cfg: Mapping[str, Any],
        seed: int,
        *,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        self.fold, self.seed, self.device = fold, int(seed), torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.branches = data.branches
        self.model_cfg = dict(model_cfg)
        self.max_epochs = int(train_cfg["max_epochs"])
        self.batch_size = int(train_cfg["batch_size"])
        self.grad_clip = float(train_cfg["grad_clip"])
        self.patience = int(train_cfg["early_stopping_patience"] or self.max_epochs)

        self.select_epoch = str(train_cfg["select_epoch"])
        if self.select_epoch not in SELECT_EPOCH:
            raise ValueError(
                f"train.select_epoch must be one of {', '.join(SELECT_EPOCH)}, not {self.select_epoch!r}"
            )

        self.train_rows = np.flatnonzero((data.labels >= 0) & (data.folds != fold))
        self.val_rows = np.flatnonzero(data.folds == fold)
        # The rows whose WAF picks the best epoch: the held-out fold, or an inner split left out of training.
        self.select_rows = self.val_rows
        if self.select_epoch == "inner":
            self.select_rows = inner_selection_rows(data, fold, self.seed)
            self.train_rows = np.setdiff1d(self.train_rows, self.select_rows)
        # Copies: arrays fetched from Ray's object store are read-only.
        self.labels = torch.tensor(data.labels)
        self.present = torch.tensor(data.present)
        self.standardizers = [
            fit_standardizer(x[self.train_rows], data.present[self.train_rows, b])
            if train_cfg["standardize"]
            else identity_standardizer(x.shape[1])
            for b, x in enumerate(data.features)
        ]
        self.inputs = [
            torch.from_numpy(apply_standardizer(x, mean, std, data.present[:, b]))
            for b, (x, (mean, std)) in enumerate(zip(data.features, self.standardizers, strict=True))
        ]

        torch.manual_seed(seed_for(self.seed, fold))
        self.model = build_model(model_cfg, data.dims).to(self.device)
        self.train_model: nn.Module = self.model  # a DDP wrapper when world_size > 1
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=float(train_cfg["lr"]), weight_decay=float(train_cfg["weight_decay"])
        )
        self.epoch = 0
        # best_waf / best_accuracy: the held-out fold's scores at the selected epoch; best_select: the
        # selection WAF there; fold_selected_waf: the held-out fold's best WAF over all epochs.
        self.best_waf, self.best_accuracy, self.best_epoch = -1.0, 0.0, 0
        self.best_select, self.fold_selected_waf = -1.0, -1.0
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.history: list[dict[str, float]] = []
        self.done = False

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Train through ``wrap(model)`` (e.g. Ray Train's ``prepare_model``, which adds DDP)."""
        self.train_model = wrap(self.model)

    def _batch(self, rows: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
        index = torch.from_numpy(rows)
        return [x[index].to(self.device) for x in self.inputs], self.present[index].to(self.device)

    def train_epoch(self) -> float:
        """One pass over the training rows; the mean loss."""
        self.train_model.train()
        torch.manual_seed(seed_for(self.seed, self.fold, self.epoch, 1))  # dropout
        batches = epoch_batches(
            len(self.train_rows),
            self.batch_size,
            seed_for(self.seed, self.fold, self.epoch, 0),
            self.rank,
            self.world_size,
        )
        total = 0.0
        for idx in batches:
            rows = self.train_rows[idx]
            features, present = self._batch(rows)
            loss = F.cross_entropy(self.train_model(features, present), self.labels[rows].to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            total += float(loss.detach()) * len(rows)
        return total / max(1, sum(len(b) for b in batches))

    @torch.no_grad()
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities ``(len(rows), 6)`` from the current weights."""
        self.model.eval()
        out = [
            torch.softmax(self.model(*self._batch(rows[i : i + _EVAL_BATCH])), dim=1).cpu()
            for i in range(0, len(rows), _EVAL_BATCH)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, len(EMOTIONS)), np.float32)

    def _scores(self, rows: np.ndarray) -> tuple[float, float]:
        y = self.labels[rows].numpy()
        pred = self.predict(rows).argmax(axis=1)
        return waf(y, pred), accuracy(y, pred)

    def step(self) -> dict[str, float]:
        """Train one epoch, score the held-out fold, keep the best epoch, decide on early stopping."""
        loss = self.train_epoch()
        val_waf, val_acc = self._scores(self.val_rows)
        select_waf = self._scores(self.select_rows)[0] if self.select_epoch == "inner" else val_waf
        self.epoch += 1
        self.fold_selected_waf = max(self.fold_selected_waf, val_waf)
        if select_waf > self.best_select:
            self.best_select, self.best_epoch = select_waf, self.epoch
            self.best_waf, self.best_accuracy = val_waf, val_acc
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.done = self.epoch >= self.max_epochs or self.epoch - self.best_epoch >= self.patience
        record = {
            "fold": self.fold,
            "epoch": self.epoch,
            "train_loss": loss,
            "val_waf": val_waf,
            "val_accuracy": val_acc,
            "select_waf": select_waf,
            "best_waf": self.best_waf,
            "best_epoch": self.best_epoch,
        }
        self.history.append(record)
        return record

    def summary(self) -> dict[str, Any]:
        """The fold's scores for result.json: the selected epoch's held-out WAF and how it was selected."""
        return {
            "fold": self.fold,
            "waf": self.best_waf,
            "accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "select_epoch": self.select_epoch,
            "select_waf": self.best_select,
            "fold_selected_waf": self.fold_selected_waf,
        }

    def use_best(self) -> None:
        """Load the best epoch's weights (for the final predictions)."""
        self.model.load_state_dict(self.best_state)

    # -- checkpointing: tensors for safetensors, the rest as JSON-able metadata --

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything needed to continue this fold exactly where it is, but the best epoch's weights.

        Those change far less often than every checkpoint: :meth:`best_weights` saves them on their own.
        """
        optim_tensors, param_groups = flatten_optimizer(self.optimizer.state_dict())
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(optim_tensors)
        meta = {
            "fold": self.fold,
            "epoch": self.epoch,
            "best_waf": self.best_waf,
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "best_select": self.best_select,
            "fold_selected_waf": self.fold_selected_waf,
            "select_epoch": self.select_epoch,
            "done": self.done,
            "history": self.history,
            "param_groups": param_groups,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if meta["fold"] != self.fold:
            raise ValueError(f"checkpoint of fold {meta['fold']} given to fold {self.fold}")
        if meta["select_epoch"] != self.select_epoch:
            raise ValueError(
                f"checkpoint of fold {self.fold} selected epochs by '{meta['select_epoch']}', "
                f"this run by '{self.select_epoch}'"
            )
        self.model.load_state_dict(prefixed(tensors, "model"))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["param_groups"]))
        self.epoch, self.done, self.history = meta["epoch"], meta["done"], list(meta["history"])
        self.best_waf, self.best_accuracy = meta["best_waf"], meta["best_accuracy"]
        self.best_epoch, self.best_select = meta["best_epoch"], meta["best_select"]
        self.fold_selected_waf = meta["fold_selected_waf"]

    def best_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The best epoch's weights so far, to resume with the :meth:`state` of the same ``best_epoch``."""
        return {f"best.{k}": v for k, v in self.best_state.items()}, {
            "fold": self.fold,
            "best_epoch": self.best_epoch,
        }

    def load_best(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore :meth:`best_weights` after :meth:`load_state`; they must be of the state's best epoch."""
        if (meta["fold"], meta["best_epoch"]) != (self.fold, self.best_epoch):
            raise ValueError(
                f"best weights of fold {meta['fold']} epoch {meta['best_epoch']} given to fold {self.fold}, "
                f"whose checkpoint's best epoch is {self.best_epoch}"
            )
        self.best_state = prefixed(tensors, "best")

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The best model and this fold's standardiser, for ``checkpoints/fold<k>.safetensors``."""
        tensors = {f"model.{k}": v for k, v in self.best_state.items()}
        for branch, (mean, std) in zip(self.branches, self.standardizers, strict=True):
            tensors[f"standardizer.{branch}.mean"] = torch.from_numpy(mean)
            tensors[f"standardizer.{branch}.std"] = torch.from_numpy(std)
        meta = {
            "format": FOLD_FORMAT,
            "model": self.model_cfg,
            "branches": list(self.branches),
            "dims": [x.shape[1] for x in self.inputs],
            "classes": list(EMOTIONS),
            "fold": self.fold,
            "best_epoch": self.best_epoch,
            "waf": self.best_waf,
        }
        return tensors, meta


def step_folds(runs: Sequence[FoldRun]) -> dict[str, Any]:
    """Advance every unfinished fold by one epoch; the mean held-out WAF over folds.

    ``cv_waf`` is the mean of each fold's best WAF so far (the CV score if training stopped now),
    ``val_waf`` the mean of each fold's latest epoch.
    """
    for run in runs:
        if not run.done:
            run.step()
    return {
        "epoch": max(run.epoch for run in runs),
        "val_waf": float(np.mean([run.history[-1]["val_waf"] for run in runs])),
        "cv_waf": float(np.mean([run.best_waf for run in runs])),
        "done": all(run.done for run in runs),
    }


def cross_validate(
    data: FeatureSet,
    model_cfg: Mapping[str, Any],
    train_cfg: Mapping[str, Any],
    seed: int,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[FoldRun]:
    """All folds in this process, in lockstep, until every fold has stopped."""
    runs = [FoldRun(data, fold, model_cfg, train_cfg, seed) for fold in range(data.n_folds)]
    while True:
        summary = step_folds(runs)
        if on_epoch is not None:
            on_epoch(summary)
        if summary["done"]:
            return runs
