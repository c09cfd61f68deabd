"""Tests that run their own Ray head: a token made the way the cluster README says, a head started the
way cluster/aws.yaml starts one (its auth environment, with test ports and temp dir), and `submit()`.

Everything lives under pytest's temp dirs: the "laptop" that makes the token and submits, and the head,
each get their own HOME, so nothing under the real ~ is read or written. A head is stopped through the
session it was started in, never with `ray stop` or a pattern kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ray_processes import STARTUP_TIMED_OUT, STOP_GRACE_S, agent_ports, free_port, keep_logs_and_remove

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
AWS_YAML = REPO / "cluster" / "aws.yaml"
# What a node's instance role gives the head's processes on a real cluster.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Settings of this machine that would decide for the test which cluster or token a process uses.
_AMBIENT = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "AWS_ENDPOINT_URL")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with HOME moved to ``home`` and no ambient Ray address or token."""
    env = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    return {**env, "HOME": str(home), **extra}


def aws_auth_lines(kind: str = "head") -> list[str]:
    """The auth environment lines of aws.yaml's ``ray start`` command for ``kind`` (head or worker)."""
    config = yaml.safe_load(AWS_YAML.read_text())
    start = next(c for c in config[f"{kind}_start_ray_commands"] if "ray start" in c)
    return [line for line in start.splitlines() if "RAY_AUTH" in line]


def run_env_lines(lines: list[str], env: Mapping[str, str]) -> dict[str, str]:
    """The environment after bash runs ``lines`` (exactly as a node would) in ``env``."""
    script = "\n".join(
        [*lines, f"exec {sys.executable} -c 'import json, os; print(json.dumps(dict(os.environ)))'"]
    )
    out = subprocess.run(["bash", "-c", script], env=dict(env), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def aws_token_mount() -> tuple[str, str]:
    """aws.yaml's file mount for the token: (path on the node, path on your machine)."""
    mounts = yaml.safe_load(AWS_YAML.read_text())["file_mounts"]
    return next((remote, local) for remote, local in mounts.items() if "auth_token" in remote)


@pytest.fixture(scope="session")
def laptop_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HOME of the user who makes the token and submits jobs."""
    return tmp_path_factory.mktemp("laptop_home")


@pytest.fixture(scope="session")
def auth_token(laptop_home: Path) -> Path:
    """The cluster token, made as the README says (`ray get-auth-token --generate`) in the laptop's HOME."""
    subprocess.run(
        [RAY, "get-auth-token", "--generate"], env=clean_env(laptop_home), capture_output=True, check=True
    )
    local = Path(aws_token_mount()[1].replace("~", str(laptop_home), 1))
    assert local.is_file() and local.read_text().strip()
    return local


def client_env(home: Path, token: Path | None) -> dict[str, str]:
    """A client (`ray job submit`, JobSubmissionClient) with ``token``; None: a client without one."""
    if token is None:
        return clean_env(home)
    return clean_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))


def _session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def _end_session(sid: int) -> None:
    """Stop every process of the session ``sid`` (one this test started): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while _session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.5)


@contextmanager
def start_head(logs: Path, env: Mapping[str, str], num_cpus: int = 2) -> Iterator[str]:
    """`ray start --head` on free ports, in a session of its own; yields the dashboard (Jobs API) URL. Its
    logs are copied to ``logs`` when it stops.

    Its own --temp-dir keeps it out of /tmp/ray, so other tests' `ray.init` never attach to it: a short one,
    as Ray's socket paths must fit in 107 bytes (pytest's temp paths, with xdist's worker folder, don't).
    Without --block, as on a node: on a loaded machine a side process (the Ray client server) may time
    out while starting, and --block would then take the whole head down.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="ecmf-head-"))
    dashboard = free_port()
    for attempt in range(3):
        head = subprocess.Popen(
            [RAY, "start", "--head", "--num-cpus", str(num_cpus), "--disable-usage-stats",
             "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             "--include-dashboard=true", "--temp-dir", str(temp_dir), *agent_ports()],
            env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        output, _ = head.communicate(timeout=600)
        if head.returncode == 0:
            break
        _end_session(head.pid)
        # Ray gives a node's agents 15 s to start, which a loaded machine can exceed: start it again.
        assert attempt < 2 and STARTUP_TIMED_OUT in output, output[-3000:]
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _end_session(head.pid)
        keep_logs_and_remove(temp_dir, logs)


@dataclass(frozen=True)
class Head:
    address: str  # the dashboard / Jobs API URL, what RAY_ADDRESS holds for `ray job submit`
    client_env: dict[str, str]  # a client holding the cluster's token


@pytest.fixture(scope="session")
def aws_head(tmp_path_factory: pytest.TempPathFactory, laptop_home: Path, auth_token: Path) -> Iterator[Head]:
    """A head started the way cluster/aws.yaml starts one, with token auth on.

    file_mounts copies the token from the laptop to the node; the node runs aws.yaml's auth lines, then
    `ray start --head` with test ports. The head's processes hold S3 credentials the way nodes get them
    from their instance role; the endpoint comes from each job's config. The head is started from this
    virtual environment, so jobs' `python` has the project's dependencies, as on a node built from
    cluster/Dockerfile.
    """
    node_home = tmp_path_factory.mktemp("node_home")
    remote, _ = aws_token_mount()
    on_node = Path(remote.replace("~", str(node_home), 1))
    on_node.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(auth_token, on_node)
    env = run_env_lines(aws_auth_lines("head"), clean_env(node_home, **S3_CREDENTIALS))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with start_head(tmp_path_factory.mktemp("ray_head"), env) as address:
        yield Head(address, client_env(laptop_home, auth_token))


# What `ray job submit` says while the head's dashboard or job agent is still coming up.
_HEAD_STARTING = ("No available agent", "Connection refused", "Remote end closed connection")


def submit(
    head: Head, *args: str, env: Mapping[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess:
    """`ray job submit ARGS` from the repository root against ``head`` (RAY_ADDRESS set, as the README
    says), retrying while the head is still starting."""
    env = {**(head.client_env if env is None else env), "RAY_ADDRESS": head.address}
    command = [RAY, "job", "submit", *args]
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        starting = any(sign in result.stderr for sign in _HEAD_STARTING)
        if result.returncode == 0 or not starting or time.monotonic() > deadline:
            return result
        time.sleep(2)
