"""The report's training-time table: the peak number of folds that trained at once, from the fold records."""

from __future__ import annotations

from ecmf_ray.finalize.report import peak_concurrency


def t(second: int) -> str:
    return f"2025-01-01T00:00:{second:02d}.000+00:00"


def test_peak_concurrency_counts_folds_that_trained_at_the_same_moment() -> None:
    assert peak_concurrency([]) == 0
    # One at a time, in the fold-major order a wave queues them: spans touch but never overlap.
    assert peak_concurrency([(t(0), t(3)), (t(3), t(6)), (t(6), t(9))]) == 1
    assert peak_concurrency([(t(0), t(5)), (t(4), t(9)), (t(8), t(12))]) == 2
    assert peak_concurrency([(t(0), t(10)), (t(1), t(2)), (t(3), t(9)), (t(4), t(5))]) == 3
