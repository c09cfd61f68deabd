"""Shared fixtures: one local Ray cluster for the whole test run."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile

import pytest

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
# Tests build tiny models locally; nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
