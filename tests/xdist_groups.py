"""Which tests share a pytest-xdist worker under ``make test`` (``-n 2 --dist loadgroup``).

A module's tests stay together, so its module-scoped fixtures (a cluster, a trained run) are built once;
every test of the session's finished run (the ``finished_run`` fixture, tests/finished_run.py) shares one
worker, so that run is built once. The slowest groups are handed out first (``make test`` keeps this
order with ``--no-loadscope-reorder``), so that the run does not end with one worker on a long group
while the other idles.

xdist's loadgroup carries the group in the test's node id, which pytest 9.2 no longer lets a plugin
change (pytest-dev/pytest-xdist#1386: the marks are ignored and every test is scheduled alone), so the
test extra pins pytest below 9.2; tests/test_xdist_groups.py fails if the grouping stops working.
"""

from __future__ import annotations

import pytest

SHARED_RUN = "finished_run"
# The slowest groups, slowest first, from CI's --durations (a few minutes each on 2 cores). Only the
# order of the work depends on this list: a stale one costs time, never a test.
SLOWEST = (
    SHARED_RUN,
    "tests/cluster/test_job_submit.py",
    "tests/cluster/test_autoscaling.py",
    "tests/cluster/test_node_loss.py",
    "tests/train/test_train_ray.py",
    "tests/finalize/test_pipeline_tune.py",
    "tests/tune/test_tune.py",
    "tests/extract/test_pipeline.py",
)


def xdist_group(item: pytest.Item) -> str:
    return SHARED_RUN if SHARED_RUN in item.fixturenames else item.nodeid.split("::")[0]


def mark_xdist_groups(items: list[pytest.Item]) -> None:
    """Mark each item with its group, and put the slowest groups first (in place; stable otherwise)."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    rank = {group: i for i, group in enumerate(SLOWEST)}
    items.sort(key=lambda item: rank.get(xdist_group(item), len(SLOWEST)))
