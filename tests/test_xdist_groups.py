"""`make test`'s worker groups (tests/xdist_groups.py) hold under the installed pytest and pytest-xdist:
a small suite run as `make test` runs this one puts each module, and every user of the shared run, on
one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFTEST = """
import json, os
import pytest
from tests.xdist_groups import mark_xdist_groups

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    mark_xdist_groups(items)

@pytest.fixture(scope="session")
def finished_run():
    return "run"

@pytest.fixture(autouse=True)
def _record(request):
    with open(os.environ["WORKERS_LOG"], "a") as log:
        log.write(json.dumps([request.node.nodeid.split("@")[0], os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")
"""


def test_modules_and_the_shared_run_each_stay_on_one_worker(tmp_path: Path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for module in ("a", "b", "c", "d"):
        tests = "".join(f"def test_{i}():\n    pass\n" for i in range(4))
        tests += f"def test_reads_the_run_{module}(finished_run):\n    pass\n"
        (suite / f"test_{module}.py").write_text(tests)
    log = tmp_path / "workers.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "--rootdir", str(suite), str(suite)],
        cwd=REPO, env={**os.environ, "WORKERS_LOG": str(log), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(ran) == 20
    workers: dict[str, set[str]] = {}
    for nodeid, worker in ran:
        group = "run" if "reads_the_run" in nodeid else nodeid.split("::")[0]
        workers.setdefault(group, set()).add(worker)
    assert all(len(w) == 1 for w in workers.values()), workers
    assert len({w for ws in workers.values() for w in ws}) == 2  # and the work was shared out
