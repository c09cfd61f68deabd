"""The README's two set-up commands on a fresh clone: `make demo` / `make test` make and use .venv/ (so a
PEP 668 system pip is never touched), CI runs `make test`, and the license is the one pyproject names."""

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_plan(tmp_path: Path, target: str, *args: str) -> list[str]:
    """The commands `make TARGET` would run in a fresh clone (no .venv yet), without running them."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    # Under CI's `make test`, MAKELEVEL/MAKEFLAGS would make this a sub-make that prints "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(
        ["make", "-n", target, *args], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_make_demo_and_test_install_into_a_project_venv(tmp_path: Path):
    for target, last in (
        ("demo", ".venv/bin/python -m ecmf_ray.cli demo"),
        ("test", ".venv/bin/python -m pytest -q -n 2 --dist loadgroup"),
    ):
        plan = make_plan(tmp_path, target)
        assert plan[0].startswith("python3 -m venv .venv"), plan
        assert plan[1:3] == [
            ".venv/bin/python -m pip install -q torch==2.13.0",
            ".venv/bin/python -m pip install -q -e '.[test]'",
        ]
        assert plan[-1] == last
        assert not [
            line for line in plan if line.startswith(("pip ", "python3 -m pip"))
        ]  # never the system pip


def test_torch_override_as_the_readme_writes_it(tmp_path: Path):
    cpu = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert f'make demo TORCH="{cpu}"' in (REPO / "README.md").read_text()
    plan = make_plan(tmp_path, "demo", f"TORCH={cpu}")
    assert f".venv/bin/python -m pip install -q {cpu}" in plan


def test_ci_runs_the_readme_test_command_and_the_license_is_shipped():
    assert "\nmake test\n" in (REPO / ".ci" / "run").read_text()
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()
