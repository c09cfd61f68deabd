"""`ray job submit --working-dir .` of the demo pipeline to a real local cluster started by the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A head started with `ray start --head --num-cpus 2`, on its own ports and temp dir.

    Its own --temp-dir keeps it out of /tmp/ray, so other tests' `ray.init` never attach to it, and it
    is stopped by killing its process group: `ray stop` would kill every Ray process on the machine.
    """
    temp_dir = tmp_path_factory.mktemp("ray_head")
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # `ray start --head` turns token auth on
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
         "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--dashboard-agent-listen-port", str(free_port()), "--include-dashboard=true",
         "--temp-dir", str(temp_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    yield f"http://127.0.0.1:{dashboard}", env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", str(temp_dir)], check=False)


def submit(
    address: str, env: dict[str, str], *entrypoint: str, timeout: float
) -> subprocess.CompletedProcess:
    """Submit and follow a job, retrying while the head's job agent is still starting."""
    runtime_env = json.dumps({"excludes": [".git", "runs", "**/__pycache__", ".ruff_cache", ".pytest_cache"]})
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
               "--runtime-env-json", runtime_env, "--", *entrypoint]  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        starting = "No available agent" in result.stderr or "Connection refused" in result.stderr
        if result.returncode == 0 or not starting or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_demo_pipeline_as_a_ray_job(ray_head: tuple[str, dict[str, str]], tmp_path: Path):
    address, env = ray_head
    run_dir = tmp_path / "job_run"
    result = submit(
        address, env,
        "python", "jobs/demo.py", "--n", "24", "--unlabeled", "6",
        f"run_dir={run_dir}", "train.folds=2", "train.max_epochs=4",
        # The smallest finalize: no relabeling, one ensemble member, no ablation rows.
        "finalize.relabel.enabled=false", "finalize.ensemble=[{name: ecmf, overrides: []}]", "finalize.ablation=[]",
        timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output
    assert (run_dir / "manifest.parquet").is_file()
    assert (run_dir / "config" / "pipeline.yaml").is_file()
    for branch in ("frame", "face", "audio", "text"):
        assert any((run_dir / "features" / branch).glob("*.parquet")), branch
    assert (run_dir / "train" / "ecmf" / "metrics.json").is_file()
    submission = pd.read_csv(run_dir / "final" / "submission.csv")
    assert list(submission.columns) == ["name", "discrete"]
    assert len(submission) == submission["name"].nunique() == 6
    assert (run_dir / "final" / "report.md").is_file()
    shutil.rmtree(run_dir)
