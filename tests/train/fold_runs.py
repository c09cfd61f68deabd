"""A fold trained straight through beside the same fold stopped, checkpointed and resumed (shared by tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecmf_ray.train.checkpoint import load_tensors, save_tensors
from ecmf_ray.train.data import FeatureSet
from ecmf_ray.train.loop import FoldRun


def straight_and_resumed(
    data: FeatureSet,
    fold: int,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    folder: Path,
    steps: int = 3,
) -> tuple[FoldRun, FoldRun, FoldRun]:
    """``(straight, first, resumed)``: ``first`` stopped after ``steps`` epochs and saved its state and best
    weights to ``folder`` (state.safetensors, best.safetensors); ``resumed`` loaded both and finished."""
    straight = FoldRun(data, fold, model_cfg, train_cfg, seed=42)
    while not straight.done:
        straight.step()
    first = FoldRun(data, fold, model_cfg, train_cfg, seed=42)
    for _ in range(steps):
        first.step()
    save_tensors(str(folder / "state.safetensors"), *first.state())
    save_tensors(str(folder / "best.safetensors"), *first.best_weights())
    resumed = FoldRun(data, fold, model_cfg, train_cfg, seed=42)
    resumed.load_state(*load_tensors(str(folder / "state.safetensors")))
    resumed.load_best(*load_tensors(str(folder / "best.safetensors")))
    while not resumed.done:
        resumed.step()
    return straight, first, resumed
