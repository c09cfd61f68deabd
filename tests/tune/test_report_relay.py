"""A fold trial's Ray Train reports reach Tune without Ray 2.60's deadlock (ecmf_ray.train.report_relay).

The race, made deterministic: the trial's first report reaches Tune, whose controller is then held for
2 s (a callback sleeps), so the trainer sends its last report and returns, and the trial's function
returns, before the trial's session asks for the next result. With Ray's own ``TuneReportCallback`` in
place of the relay that report is still queued when the function returns, and the trial hangs for good
(checked by swapping it in; see the module docstring of report_relay); the test gives up after 60 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ray import tune

from ecmf_ray.train.report_relay import TrainReportRelay

EPOCHS = (1, 2)
TIMEOUT_S = 60


class HoldAfterFirstResult(tune.Callback):
    """Records every result's epoch and holds Tune's controller for 2 s after the first one."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.epochs.append(result["epoch"])
        if len(self.epochs) == 1:
            time.sleep(2)


def test_a_trial_that_returns_right_after_its_last_train_report_finishes(ray_cluster, tmp_path: Path):
    # Defined here, so that Ray ships the function itself (workers cannot import this test module).
    def trial(config: dict[str, Any]) -> None:
        relay = TrainReportRelay()

        def fit() -> str:  # a trainer's fit: its controller reports each epoch and returns at once
            for epoch in EPOCHS:
                relay.after_report(None, [{"epoch": epoch}], None)
            return "fitted"

        assert relay.fit(fit) == "fitted"

    held = HoldAfterFirstResult()
    tuner = tune.Tuner(
        trial,
        run_config=tune.RunConfig(name="relay", storage_path=str(tmp_path), verbose=0, callbacks=[held]),
    )
    outcome: dict[str, Any] = {}
    fitting = threading.Thread(target=lambda: outcome.update(results=tuner.fit()), daemon=True)
    fitting.start()
    fitting.join(TIMEOUT_S)
    assert not fitting.is_alive(), f"the trial hung after its reports {held.epochs}"
    assert not outcome["results"].errors
    assert held.epochs == list(EPOCHS)  # every report reached Tune, in order


def test_an_error_in_fit_fails_the_trial_after_the_reports_before_it(ray_cluster, tmp_path: Path):
    def failing(config: dict[str, Any]) -> None:
        relay = TrainReportRelay()

        def fit() -> None:
            relay.after_report(None, [{"epoch": 1}], None)
            raise RuntimeError("the trainer failed")

        relay.fit(fit)

    held = HoldAfterFirstResult()
    tuner = tune.Tuner(
        failing,
        run_config=tune.RunConfig(name="failing", storage_path=str(tmp_path), verbose=0, callbacks=[held]),
    )
    results = tuner.fit()
    assert "the trainer failed" in str(results.errors[0])
    assert held.epochs == [1]
