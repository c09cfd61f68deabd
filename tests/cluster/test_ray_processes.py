"""The test clusters' own plumbing (tests/cluster/ray_processes.py), without Ray: ports and node starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray_processes
from ray_processes import RayProcesses, free_port


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch):
    """The OS may offer a port again while the node it went to is still starting and has not bound it."""
    offered = iter([5001, 5001, 5002])

    class Socket:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            assert address == ("", 0)  # free on every local address, not on loopback alone

        def getsockname(self):
            return ("0.0.0.0", next(offered))

    monkeypatch.setattr(ray_processes, "_HANDED_OUT", set())
    monkeypatch.setattr(ray_processes.socket, "socket", Socket)
    assert [free_port(), free_port()] == [5001, 5002]


def port_args(args: list[str]) -> dict[str, str]:
    return {flag: args[i + 1] for i, flag in enumerate(args) if flag.endswith("-port")}


def test_a_node_start_that_timed_out_is_retried_on_new_agent_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A node whose agent could not bind its port (another node's agent held it) times out; started again on
    the same ports, it timed out on every attempt (a CI run lost its node-loss test so)."""
    calls = tmp_path / "calls"
    fake_ray = tmp_path / "ray"
    fake_ray.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        f'[ "$(wc -l < {calls})" -ge 2 ] && exit 0\n'
        'echo "Exception: The current node timed out during startup."\n'
        "exit 1\n"
    )
    fake_ray.chmod(0o755)
    monkeypatch.setattr(ray_processes, "RAY", str(fake_ray))
    cluster = RayProcesses(tmp_path, dict(os.environ))
    try:
        cluster.add_worker(num_cpus=1)
    finally:
        cluster.stop()
    first, second = (port_args(line.split()) for line in calls.read_text().splitlines())
    assert "--dashboard-agent-grpc-port" in first and first.keys() == second.keys()
    assert not set(first.values()) & set(second.values())
