"""Shared fixtures: one local Ray cluster for the whole test run."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
import time

import pytest

from tests.xdist_groups import mark_xdist_groups

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray 2.60 turns token auth on for every local cluster and, finding no token, writes one to
# ~/.ray/auth_token. Every cluster the tests start (here and in subprocesses) uses this run's own token
# under a temp dir instead, so nothing under ~ is read or written.
_TOKEN_DIR = tempfile.mkdtemp(prefix="ecmf-tests-ray-token-")
atexit.register(shutil.rmtree, _TOKEN_DIR, True)
with open(os.path.join(_TOKEN_DIR, "auth_token"), "w") as _f:
    _f.write(secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(_TOKEN_DIR, "auth_token")
# Every process the tests start (Ray's included) gets a HOME of its own under a temp dir, so caches that
# default to ~ (storage.model_cache's tiny models, matplotlib's) stay out of the real one;
# `_real_home_unchanged` checks that nothing wrote there by any other path.
# pytest-xdist's workers inherit the HOME set below from the process that starts them: the real one is
# passed on by name.
_REAL_HOME = os.environ.setdefault("ECMF_TESTS_REAL_HOME", os.path.expanduser("~"))
_TEST_HOME = tempfile.mkdtemp(prefix="ecmf-tests-home-")
atexit.register(shutil.rmtree, _TEST_HOME, True)
os.environ["HOME"] = _TEST_HOME
# Tests build tiny models locally; nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _changed_since(folder: str, since_ns: int) -> list[str]:
    """Everything under ``folder`` (itself included) whose inode changed since ``since_ns``: written,
    created, renamed, or (through its folder's change) deleted. One stat per entry, no reads."""
    changed, todo = [], [folder]
    while todo:
        path = todo.pop()
        try:
            if os.lstat(path).st_ctime_ns >= since_ns:
                changed.append(path)
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                    elif entry.stat(follow_symlinks=False).st_ctime_ns >= since_ns:
                        changed.append(entry.path)
        except FileNotFoundError:  # deleted while walking: its folder's change is reported
            continue
    return changed


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_xdist_groups(items)


@pytest.fixture(scope="session", autouse=True)
def _real_home_unchanged():
    """Fails the run if any test wrote under the real ~ (HOME moves to a temp dir above)."""
    started = time.time_ns()
    yield
    changed = _changed_since(_REAL_HOME, started)
    assert not changed, f"tests wrote under {_REAL_HOME}: {sorted(changed)[:20]}"


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-CPU local Ray cluster shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        # address="local": never attach to a cluster someone started with `ray start` on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def finished_run(ray_cluster, tmp_path_factory):
    """One finished pipeline run for the tests that only read it, built once (tests/finished_run.py)."""
    from tests.finished_run import build_finished_run

    return build_finished_run(tmp_path_factory.mktemp("finished_run"))


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's standalone S3 server on a free loopback port, for the whole run."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Point s3fs (and everything built on ecmf_ray.storage) at the moto server, with dummy credentials."""
    import s3fs

    for name, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield moto_endpoint
    s3fs.S3FileSystem.clear_instance_cache()
