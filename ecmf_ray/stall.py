"""A streaming Ray Data job that stops making progress fails with one error a person can act on.

Ray Data fails an execution in which no operator produced or consumed output for
``DataContext.execution_no_progress_timeout_s`` (30 minutes by default) with a bare
``ExecutionTimeoutError``. ``extract.stall_timeout_s`` and ``enrich.stall_timeout_s`` set it for their
job's dataset; on expiry :func:`stall_guarded_batches` raises :class:`Stalled`, naming the stage, the
videos done and not done, and that a rerun resumes (both jobs journal what they finished).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd


class Stalled(RuntimeError):
    """A stage made no progress for its stall timeout."""


def stall_guarded_batches(
    dataset: Any, stage: str, timeout_s: float, progress: Callable[[], tuple[int, int]]
) -> Iterator[pd.DataFrame]:
    """``dataset``'s batches (one per block, as pandas), failing after ``timeout_s`` without progress.

    ``progress() -> (done, total)`` counts the stage's videos when the stall is reported.
    """
    from ray.data.exceptions import ExecutionTimeoutError

    dataset.context.execution_no_progress_timeout_s = float(timeout_s)
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pandas")
    except ExecutionTimeoutError as err:
        done, total = progress()
        raise Stalled(
            f"{stage}: no progress for {timeout_s:g} s ({stage}.stall_timeout_s); {done} of {total} videos "
            f"done, {total - done} not done. Rerun `ecmf {stage}` to resume: what is done is kept. A stage "
            f"waiting for nodes to launch needs a larger {stage}.stall_timeout_s; otherwise a task is "
            "stuck (see the Ray dashboard)"
        ) from err
