"""Progress a person can watch while folds train: plain periodic lines, readable in a terminal and in logs.

The driver hands :class:`FoldProgress` each fold's reports (epoch, best held-out WAF so far) as they
arrive; it logs one compact line every ``interval_s`` seconds, and one when a fold finishes. One
experiment (``train``)::

    train ecmf: 2/5 folds done, 2 running, 1 waiting, eta ≤6m20s | fold2 epoch 40/200 best 0.712 eta ≤3m10s | ...

A batch of experiments (a finalize wave) leads with the experiments::

    finalize members: 3/16 experiments done, 4 running, 9 waiting; 20/96 folds, eta ≤1h10m | ecmf/fold2 epoch 40/200 best 0.712 eta ≤3m10s | ...

No control characters: the same lines serve a terminal, CI logs and ``ray job logs``. ETAs are upper
bounds (early stopping usually ends a fold sooner): a fold's from its own seconds per epoch, the whole
batch's from the running folds' mean pace, their remaining epochs and the waiting folds', spread over
as many folds as are running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

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


def batch_eta(states: list[FoldState], waiting: int, max_epochs: int) -> float | None:
    """Seconds until every fold is done, at most: remaining fold-epochs x mean pace / folds running."""
    running = [s for s in states if not s.done]
    paces = [p for p in (s.seconds_per_epoch() for s in running) if p is not None]
    if not paces:
        return None
    remaining = sum(max(0, max_epochs - s.epoch) for s in running) + waiting * max_epochs
    return sum(paces) / len(paces) * remaining / len(running)


def format_progress(
    label: str, tasks: list[tuple[str, int]], states: dict[int, FoldState], max_epochs: int, shown: int = 6
) -> str:
    """One line: counts and the batch's ETA, then epoch, best WAF and ETA of (at most ``shown``) running folds.

    ``tasks``: (experiment name, fold) of every trial; ``states``: by task index, for the trials seen.
    """
    done = sum(s.done for s in states.values())
    running = {t: s for t, s in sorted(states.items()) if not s.done}
    waiting = len(tasks) - len(states)
    eta = batch_eta(list(states.values()), waiting, max_epochs)
    overall = "" if eta is None or not running else f", eta ≤{format_duration(eta)}"
    names = list(dict.fromkeys(name for name, _ in tasks))
    if len(names) == 1:
        head = f"{label}: {done}/{len(tasks)} folds done, {len(running)} running, {waiting} waiting{overall}"
    else:
        status = {name: [states.get(t) for t, (n, _) in enumerate(tasks) if n == name] for name in names}
        finished = sum(all(s is not None and s.done for s in folds) for folds in status.values())
        started = sum(any(s is not None for s in folds) for folds in status.values())
        head = (
            f"{label}: {finished}/{len(names)} experiments done, {started - finished} running, "
            f"{len(names) - started} waiting; {done}/{len(tasks)} folds{overall}"
        )
    parts = [head]
    for task, state in list(running.items())[:shown]:
        name, fold = tasks[task]
        best = "-" if state.best_waf is None else f"{state.best_waf:.3f}"
        pace = state.seconds_per_epoch()
        fold_eta = "?" if pace is None else f"≤{format_duration(pace * (max_epochs - state.epoch))}"
        where = f"fold{fold}" if len(names) == 1 else f"{name}/fold{fold}"
        parts.append(f"{where} epoch {state.epoch}/{max_epochs} best {best} eta {fold_eta}")
    if len(running) > shown:
        parts.append(f"+{len(running) - shown} more running")
    return " | ".join(parts)


class FoldProgress:
    """The progress of a batch of fold tasks, each ``(experiment index, fold)``.

    ``tasks``: every task of the batch; ``names``: each experiment's name, by index.
    """

    def __init__(
        self,
        label: str,
        tasks: list[tuple[int, int]],
        names: list[str],
        max_epochs: int,
        interval_s: float = 15.0,
        emit: Callable[[str], None] = logger.info,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.max_epochs = label, max_epochs
        self.tasks = [(names[e], fold) for e, fold in tasks]
        self.index = {(int(e), int(fold)): i for i, (e, fold) in enumerate(tasks)}
        self.interval_s, self.emit, self.clock = interval_s, emit, clock
        self.states: dict[int, FoldState] = {}
        self._last_emit = float("-inf")

    def _state(self, task: tuple[int, int]) -> FoldState:
        return self.states.setdefault(self.index[int(task[0]), int(task[1])], FoldState())

    def on_report(self, task: tuple[int, int], metrics: dict) -> None:
        """A report of ``task``'s training worker (``epoch``, ``best_waf``)."""
        state, now = self._state(task), self.clock()
        if "epoch" not in metrics:
            return
        if state.first_seen is None:
            # Pace is measured from the first report on: the fold's start-up is not an epoch.
            state.first_seen, state.first_epoch = now, int(metrics["epoch"])
        state.epoch, state.last_seen = int(metrics["epoch"]), now
        state.best_waf = float(metrics["best_waf"]) if "best_waf" in metrics else state.best_waf
        if now - self._last_emit >= self.interval_s:
            self._emit(now)

    def on_done(self, task: tuple[int, int]) -> None:
        """``task`` ended (trained, or failed for good)."""
        self._state(task).done = True
        self._emit(self.clock())

    def _emit(self, now: float) -> None:
        self._last_emit = now
        self.emit(format_progress(self.label, self.tasks, self.states, self.max_epochs))
