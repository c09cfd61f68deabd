"""Ray Train reports relayed to the Ray Tune trial that runs the trainer, through public API only.

Why not Ray's ``ray.tune.integration.ray_train.TuneReportCallback``: in Ray 2.60 it hands each report
to the trial's Tune session through a one-slot queue that the session's main thread drains while it
waits for the trial's own reports. A trial whose function returns while such a report is still queued
hangs for good: the main thread, moving that report into its one-slot result queue, waits behind the
trial's final report (Tune sends one, ``RESULT_DUPLICATE``, even for a function that returns nothing),
and that report waits for the main thread. Seen under load in the autoscaling rehearsal; reproduced in
``tests/tune/test_report_relay.py``.

Here the trial's own thread makes every Tune report, so there is nothing to race: the trainer's
controller puts each report's metrics in a Ray queue (unbounded: the controller never waits for the
trial), the trainer's ``fit`` runs in a helper thread, and the trial's thread reports whatever arrives
until ``fit`` has returned and the queue is empty.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ray import tune
from ray.train import UserCallback
from ray.util.queue import Empty, Queue

T = TypeVar("T")


class TrainReportRelay(UserCallback):
    """A Ray Train callback (it runs in the trainer's controller) that queues rank 0's metrics of every
    report; :meth:`fit` runs the trainer and reports them to Tune from the trial's thread."""

    def __init__(self, poll_s: float = 0.25) -> None:
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.poll_s = poll_s

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put(dict(metrics[0]))

    def fit(self, fit: Callable[[], T]) -> T:
        """``fit()`` (a trainer's ``fit``) in a helper thread; meanwhile every metrics dict it reports goes
        to Tune from this thread. Returns (or raises) what ``fit`` did, once all of them are reported."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = fit()
            except BaseException as error:  # handed to the trial's thread, raised there
                outcome["error"] = error

        helper = threading.Thread(target=run, name="train-fit", daemon=True)
        helper.start()
        try:
            while True:
                # Read before the queue: once fit has returned, an empty queue means nothing more comes.
                finished = not helper.is_alive()
                try:
                    metrics = self.queue.get(timeout=self.poll_s)
                except Empty:
                    if finished:
                        break
                    continue
                tune.report(metrics)
        finally:
            self.queue.shutdown()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]
