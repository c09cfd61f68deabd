"""Which tests share a pytest-xdist worker under ``make test`` (``-n 2 --dist loadgroup``).

A module's tests stay together, so its module-scoped fixtures (a cluster, a trained run) are built once;
every test of the session's finished run (the ``finished_run`` fixture, tests/finished_run.py) shares one
worker, so that run is built once.

xdist's loadgroup carries the group in the test's node id, which pytest 9.2 no longer lets a plugin
change (pytest-dev/pytest-xdist#1386: the marks are ignored and every test is scheduled alone), so the
test extra pins pytest below 9.2; tests/test_xdist_groups.py fails if the grouping stops working.
"""

from __future__ import annotations

import pytest

SHARED_RUN = "finished_run"


def xdist_group(item: pytest.Item) -> str:
    return SHARED_RUN if SHARED_RUN in item.fixturenames else item.nodeid.split("::")[0]


def mark_xdist_groups(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
