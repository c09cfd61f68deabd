"""`ray job submit --working-dir .` to a real local cluster started by the test: the demo pipeline on
local disk, and the pipeline with its dataset and run_dir on S3 (moto's server on 127.0.0.1)."""

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
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# The smallest finalize: no relabeling, one ensemble member, no ablation rows.
SMALL_FINALIZE = (
    "finalize.relabel.enabled=false",
    "finalize.ensemble=[{name: ecmf, overrides: []}]",
    "finalize.ablation=[]",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str
) -> Iterator[tuple[str, dict[str, str]]]:
    """A head started with `ray start --head --num-cpus 2`, on its own ports and temp dir.

    Its own --temp-dir keeps it out of /tmp/ray, so other tests' `ray.init` never attach to it, and it
    is stopped by killing its process group: `ray stop` would kill every Ray process on the machine.
    Its processes hold S3 credentials the way cluster nodes get them from an instance role; the endpoint
    comes from each job's config.
    """
    temp_dir = tmp_path_factory.mktemp("ray_head")
    dashboard = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", **S3_CREDENTIALS}  # `ray start --head` turns token auth on
    env.pop("RAY_ADDRESS", None)
    env.pop("AWS_ENDPOINT_URL", None)
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
        head.wait(timeout=10)
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
        f"run_dir={run_dir}", "train.folds=2", "train.max_epochs=4", *SMALL_FINALIZE,
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


def test_pipeline_on_s3_as_a_ray_job(ray_head: tuple[str, dict[str, str]], s3_env: str, tmp_path: Path):
    """Dataset, run_dir, features, checkpoints (train and tune) and final outputs all in a moto bucket."""
    import s3fs

    from ecmf_ray import storage
    from ecmf_ray.data.synth import synthesize

    synthesize(str(tmp_path / "mer"), 16, unlabeled=4, seed=3, duration_s=2.0)
    fs = s3fs.S3FileSystem()
    fs.mkdir("ecmf-e2e")
    for path in (tmp_path / "mer").rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://ecmf-e2e/mer/{path.relative_to(tmp_path / 'mer')}", path.read_bytes())
    run_dir = "s3://ecmf-e2e/run"
    address, env = ray_head
    result = submit(
        address, env,
        "python", "jobs/pipeline.py", "--config", "local",
        f"storage.endpoint_url={s3_env}", f"run_dir={run_dir}", "dataset.format=mer2025",
        "dataset.root=s3://ecmf-e2e/mer", "train.folds=2", "train.max_epochs=4", "train.checkpoint_every=2",
        "pipeline.tune=true", "tune.num_samples=2", "tune.scheduler=fifo", "tune.checkpoint_every=2",
        *SMALL_FINALIZE,
        timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output

    manifest = storage.read_table(f"{run_dir}/manifest.parquet").to_pandas()
    assert len(manifest) == 20 and manifest["video_path"].str.startswith("s3://ecmf-e2e/mer/video/").all()
    for branch in ("frame", "face", "audio", "text"):
        assert fs.glob(f"ecmf-e2e/run/features/{branch}/*.parquet"), branch
    files = fs.find("ecmf-e2e/run")
    assert any("/train/ecmf/" in f and f.endswith(".safetensors") for f in files)  # fold checkpoints
    assert any("/tune/ray/" in f and f.endswith(".safetensors") for f in files)  # trial checkpoints
    assert fs.exists("ecmf-e2e/run/tune/best.yaml") and fs.exists("ecmf-e2e/run/final/report.md")
    submission = pd.read_csv(fs.open("ecmf-e2e/run/final/submission.csv"))
    test_names = manifest.loc[manifest["split"].eq("test"), "video_id"]
    assert sorted(submission["name"]) == sorted(test_names) and len(submission) > 0
