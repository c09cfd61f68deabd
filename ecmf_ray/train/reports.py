"""Ray Train reports carried to the driver that trains a batch of folds, for its progress lines."""

from __future__ import annotations

import logging
from typing import Any

from ray.exceptions import RayError
from ray.train import UserCallback

logger = logging.getLogger(__name__)


class ReportsToDriver(UserCallback):
    """A Ray Train callback (it runs in a fold's controller) that puts rank 0's metrics of every report,
    tagged with the fold's task, on the batch's queue, for the driver's progress lines."""

    def __init__(self, queue: Any, task: tuple[int, int]) -> None:
        self.queue, self.task = queue, task

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        try:
            self.queue.put((self.task, dict(metrics[0])))
        except RayError as error:  # progress lines are not worth a failed fold
            logger.warning("fold %s: a report did not reach the driver's progress: %s", self.task, error)
