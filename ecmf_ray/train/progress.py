"""Progress a person can watch while folds train: plain periodic lines, readable in a terminal and in logs.

Ray Tune's own table is off for the fold trials (it shows trial ids, not folds). Instead a Tune callback
collects each fold's reports (epoch, best held-out WAF so far) and logs one compact line every
``interval_s`` seconds, and one when a fold finishes::

    train ecmf: 2/5 folds done, 2 running, 1 waiting | fold2 epoch 40/200 best 0.712 eta ≤3m10s | ...

No control characters: the same lines serve a terminal, CI logs and ``ray job logs``. ETAs are upper
bounds (early stopping usually ends a fold sooner) from each fold's own seconds per epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

logger = logging.getLogger(__name__)


@dataclass
class FoldState:
    """What the driver knows of one fold from its reports."""

    epoch: int = 0
    best_waf: float | None = None
    first_epoch: int = 0  # its epoch at the first report (a resumed fold starts past 0)
    first_seen: float | None = None
    last_seen: float | None = None
    done: bool = False

    def seconds_per_epoch(self) -> float | None:
        epochs = self.epoch - self.first_epoch
        if epochs <= 0 or self.first_seen is None or self.last_seen is None:
            return None
        return (self.last_seen - self.first_seen) / epochs


def format_duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``4000`` -> ``1h06m``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_progress(label: str, folds: dict[int, FoldState], total: int, max_epochs: int) -> str:
    """One line: folds done / running / waiting, then epoch, best WAF and ETA of each running fold."""
    done = sum(s.done for s in folds.values())
    running = {k: s for k, s in sorted(folds.items()) if not s.done}
    waiting = total - len(folds)
    parts = [f"{label}: {done}/{total} folds done, {len(running)} running, {waiting} waiting"]
    for fold, state in running.items():
        best = "-" if state.best_waf is None else f"{state.best_waf:.3f}"
        pace = state.seconds_per_epoch()
        eta = "?" if pace is None else f"≤{format_duration(pace * (max_epochs - state.epoch))}"
        parts.append(f"fold{fold} epoch {state.epoch}/{max_epochs} best {best} eta {eta}")
    return " | ".join(parts)


class FoldProgress(Callback):
    """Tune callback for the fold trials of one experiment (``fold`` in each trial's config)."""

    def __init__(
        self,
        label: str,
        total: int,
        max_epochs: int,
        interval_s: float = 15.0,
        emit: Callable[[str], None] = logger.info,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.max_epochs = label, total, max_epochs
        self.interval_s, self.emit, self.clock = interval_s, emit, clock
        self.folds: dict[int, FoldState] = {}
        self._last_emit = float("-inf")

    def _state(self, trial: Any) -> FoldState:
        return self.folds.setdefault(int(trial.config["fold"]), FoldState())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        state, now = self._state(trial), self.clock()
        if "epoch" not in result:
            return
        if state.first_seen is None:
            # Pace is measured from the first report on: the trial's start-up is not an epoch.
            state.first_seen, state.first_epoch = now, int(result["epoch"])
        state.epoch, state.last_seen = int(result["epoch"]), now
        state.best_waf = float(result["best_waf"]) if "best_waf" in result else state.best_waf
        if now - self._last_emit >= self.interval_s:
            self._emit(now)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._state(trial).done = True
        self._emit(self.clock())

    def _emit(self, now: float) -> None:
        self._last_emit = now
        self.emit(format_progress(self.label, self.folds, self.total, self.max_epochs))
