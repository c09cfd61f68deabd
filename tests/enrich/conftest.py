"""Fixtures for the enrich tests (helpers live in chat_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chat_server import API_KEY, ChatServer

from ecmf_ray import storage


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ChatServer]:
    with ChatServer(API_KEY) as server:
        yield server


@pytest.fixture
def s3_run_dir(s3_env: str) -> Iterator[str]:
    """An s3:// run_dir in a fresh bucket on the moto server."""
    fs, _ = storage.get_fs("s3://enrich-test/")
    if not fs.exists("enrich-test"):
        fs.mkdir("enrich-test")
    yield "s3://enrich-test/run"
