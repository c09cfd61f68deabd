"""The synthetic run folder shared by the training tests."""

from __future__ import annotations

import pytest
from fake_features import write_fake_run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    run_dir = str(tmp_path_factory.mktemp("fake_run"))
    write_fake_run(run_dir, n_train=240, n_test=30, separation=4.0)
    return run_dir
