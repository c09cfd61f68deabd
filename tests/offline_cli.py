"""`ecmf` as a user runs it on a fresh machine with no network: a subprocess whose Hugging Face cache, HOME
and Ray settings are its own, for the tests that load the default hub ids from an offline cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def offline_ecmf(hf_home: Path, home: Path) -> Callable[..., str]:
    """A runner of ``python -m ecmf_ray.cli ARGS`` with the hub cache at ``hf_home``, offline, and ``home`` as
    HOME (the model cache, Ray's token): none of this test run's RAY_* settings. It returns the command's
    output (stdout, then stderr), and fails the test with it when the command fails."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HOME": str(home), "RAY_DEDUP_LOGS": "0"}

    def ecmf(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ecmf_ray.cli", *args], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr

    return ecmf
