"""Real multi-node Ray clusters for tests, made of `ray start` processes this test run starts and ends.

Every head and worker is a `ray start` run in its own session, so its process group holds every
process it starts (GCS, raylet, agents, workers, fake autoscaler nodes). A cluster is stopped by killing
those groups, and any process once seen in them, by pid: never `ray stop`, never a pattern kill.
Token auth is on, as on a real cluster: the token file lives in the test's temp dir.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.util.state import StateApiClient
from ray.util.state.common import ListApiOptions, StateResource
from ray.util.state.exception import RayStateApiException

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


_HANDED_OUT: set[int] = set()  # every port free_port gave this process


def free_port() -> int:
    """A TCP port free on every local address, never one this process handed out before.

    Ray binds some agents to the node's IP and others to 0.0.0.0: a port free on loopback alone may be
    held on the node's IP by another node's agent. And a port handed out but not yet bound (its node
    still starting) is free to the OS, which may offer it again.
    """
    while True:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def cluster_env(tmp: Path) -> dict[str, str]:
    """The environment of every node and client: token auth with a token file under ``tmp``, this
    venv first on PATH (a job's driver runs the head's `python`), no inherited cluster address."""
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ..., starttime at [19])."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _processes() -> dict[int, list[str]]:
    return {int(e): fields for e in os.listdir("/proc") if e.isdigit() and (fields := _stat(e))}


def group_members(pgid: int) -> list[int]:
    """Every live process in process group ``pgid``, read from /proc."""
    return [pid for pid, fields in _processes().items() if int(fields[2]) == pgid]


def group_tree(pgid: int) -> dict[int, str]:
    """``{pid: start time}`` of a group's processes and of every process below them (a job's
    driver, for one, runs in a session of its own)."""
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, fields in procs.items():
        children.setdefault(int(fields[1]), []).append(pid)
    todo = [pid for pid, fields in procs.items() if int(fields[2]) == pgid]
    found = {}
    while todo:
        pid = todo.pop()
        found[pid] = procs[pid][19]
        todo += [c for c in children.get(pid, []) if c not in found]
    return found


def agent_ports() -> list[str]:
    """Fixed ports for a node's agents: given ports, the raylet need not wait for the agents to write
    theirs to files, a wait Ray caps at 15 s, which a busy 2-core machine can exceed."""
    return [
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
    ]  # fmt: skip


# What `ray start` says when a node's agents took longer than the 15 s Ray gives them: worth a retry.
STARTUP_TIMED_OUT = "timed out during startup"
# How long a stopping cluster or head gets after SIGTERM before SIGKILL. A worker node exits in ~1.5 s; a
# head's GCS and raylet sit out SIGTERM far longer, and nothing is left to save by then (the logs are
# written as they go).
STOP_GRACE_S = 5


def keep_logs_and_remove(temp_dir: Path, logs: Path) -> None:
    """A stopped node's Ray temp dir: its session logs copied under ``logs`` (they stay with the test's
    files), then the folder removed."""
    for session_logs in temp_dir.glob("session_*/logs"):
        shutil.copytree(session_logs, logs / session_logs.parent.name, dirs_exist_ok=True)
    shutil.rmtree(temp_dir, ignore_errors=True)


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class RayProcesses:
    """The Ray nodes of one test cluster: a head, and worker nodes added and removed.

    Each node is a `ray start` run in its own session: it returns once the node is up, and the
    node's processes (GCS, raylet, agents, its workers, fake autoscaler nodes) stay in its group.
    """

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env = tmp, env
        self.port, self.dashboard_port = free_port(), free_port()
        self.groups: list[int] = []  # one process group per node started
        # (pid, start time) of every process seen in those groups, for the final cleanup.
        self.seen: set[tuple[int, str]] = set()
        # Ray's own folder: short, as its socket paths must fit in 107 bytes (pytest's tmp paths don't).
        self.temp_dir = tempfile.mkdtemp(prefix="ecmf-ray-")

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, *args: str, env: dict[str, str] | None = None, attempts: int = 5) -> int:
        """Run `ray start` in a new session, with agent ports of its own (:func:`agent_ports`); returns its
        process group. A node whose start timed out (Ray gives its agents 15 s, which a busy machine can
        exceed) is ended and started again, on new agent ports: an agent that failed to bind its port
        would fail on it again."""
        # Every process of the node gets the cluster's address: Ray's in-cluster State API clients (Ray
        # Train's PlacementGroupCleaner, which frees a dead controller's CPUs) otherwise look for the one
        # Ray instance on the host, and fail when another test's cluster runs beside this one.
        env = {**(env or self.env), "RAY_ADDRESS": self.gcs_address}
        for attempt in range(attempts):
            log = self.tmp / f"ray_start_{len(self.groups)}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [RAY, "start", "--disable-usage-stats", *args, *agent_ports()],
                    env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
                self.groups.append(proc.pid)
                code = proc.wait(timeout=300)
            self.remember()
            if code == 0:
                return proc.pid
            self.stop_node(proc.pid)
            if attempt == attempts - 1 or STARTUP_TIMED_OUT not in log.read_text():
                raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
        raise AssertionError("unreachable")

    def start_head(self, *args: str, env: dict[str, str] | None = None) -> int:
        """A head with 0 CPUs (as on the cluster), dashboard and client server on loopback/free ports."""
        return self._start(
            "--head", "--port", str(self.port), "--num-cpus", "0", "--include-dashboard=true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(free_port()), "--temp-dir", self.temp_dir, *args,
            env=env,
        )  # fmt: skip

    def add_worker(self, num_cpus: int = 1, num_gpus: int = 0) -> int:
        """A worker node; returns its process group."""
        return self._start(
            "--address", self.gcs_address, "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
            "--object-store-memory", str(10**9),
        )  # fmt: skip

    def raylet_pid(self, group: int) -> int:
        """The pid of a node's raylet."""
        return next(p for p in group_members(group) if process_name(p) == "raylet")

    def node_id(self, group: int) -> str:
        """The Ray node id of a node (its raylet's ``--node_id``)."""
        args = Path(f"/proc/{self.raylet_pid(group)}/cmdline").read_bytes().decode().split("\0")
        return next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))

    def remember(self) -> None:
        for group in self.groups:
            self.seen.update(group_tree(group).items())

    def kill_node(self, group: int) -> None:
        """What a lost machine looks like to Ray: its raylet dies at once (SIGKILL); then the rest of
        that node's processes are ended too, as they would be with the machine."""
        self.remember()
        os.kill(self.raylet_pid(group), signal.SIGKILL)
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def stop_node(self, group: int) -> None:
        """Take a worker node out of the cluster (its whole process group)."""
        self.remember()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        wait_for(lambda: not group_members(group), 15, 0.5, "the node to exit", fail=False)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def log_tails(self, *patterns: str, chars: int = 3000) -> str:
        """The last ``chars`` of each of this cluster's Ray logs matching ``patterns``: what a failed
        test prints so that a hang on CI can be told apart from a slow run."""
        tails = []
        for pattern in patterns:
            for log in sorted(Path(self.temp_dir).glob(f"session_*/logs/{pattern}")):
                tails.append(f"==> {log.name} <==\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(tails)

    def stop(self) -> None:
        """End every process this cluster started: its groups, then any process that left them."""
        self.remember()
        for group in reversed(self.groups):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        wait_for(
            lambda: not any(group_members(g) for g in self.groups),
            STOP_GRACE_S,
            0.5,
            "Ray to exit",
            fail=False,
        )
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for pid, started in self.seen:
            fields = _stat(pid)
            if fields and fields[19] == started:  # still that process, not a reused pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        keep_logs_and_remove(Path(self.temp_dir), self.tmp / "ray_logs")


def wait_for(
    check: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "", fail: bool = True
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            if not fail:
                return value
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what or check}")
        time.sleep(interval)


def state(cluster: RayProcesses, resource: str, *filters: tuple[str, str, str]) -> list[dict[str, Any]]:
    """The State API's detailed list of ``resource`` (actors, tasks, nodes, jobs) on the cluster, through
    its dashboard with the cluster's token; ``filters`` as ``(key, "=", value)``.

    Asked from this process: the tests poll it several times a second, and a `ray list` process per look
    costs ~1.5 CPU-seconds, which on CI's 2 cores slows the very run being watched."""
    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    client = StateApiClient(cluster.dashboard, headers={"authorization": f"Bearer {token}"})
    options = ListApiOptions(limit=10_000, detail=True, filters=list(filters))
    found = client.list(StateResource(resource), options=options, raise_on_missing_output=False)
    return [entry.asdict() for entry in found]


def alive_nodes(cluster: RayProcesses) -> list[dict[str, Any]]:
    return [n for n in state(cluster, "nodes") if n["state"] == "ALIVE"]


def wait_for_head(cluster: RayProcesses, timeout: float = 120) -> list[dict[str, Any]]:
    """The alive nodes, once the head's dashboard answers."""

    def answer() -> list[dict[str, Any]] | None:
        try:
            return alive_nodes(cluster)
        except (OSError, RayStateApiException):
            return None  # the dashboard is still starting (requests' errors are OSErrors)

    return wait_for(answer, timeout, 1, "the head's dashboard")
