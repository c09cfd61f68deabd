# The two set-up commands of the README: `make demo` and `make test`. Both create the project's virtual
# environment (.venv/) and install into it first, so they work where the system pip is externally
# managed (PEP 668); later runs reinstall only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, from the wheel this names. torch==2.13.0 from PyPI on Linux is the CUDA build
# (several GB); for the CPU build use TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
# for another CUDA version e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
TORCH ?= torch==2.13.0
# pytest-xdist workers for `make test`: two keep CI's 2 cores busy while one waits on Ray (process
# start-up, a cluster's heartbeats). Each worker has its own local Ray cluster; tests/conftest.py keeps
# a module's tests, and every reader of the shared finished run, on one worker.
TEST_WORKERS ?= 2

.PHONY: install demo test lint

$(PY):
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu, apt install python3-venv" >&2; exit 1; }

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m ecmf_ray.cli demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
