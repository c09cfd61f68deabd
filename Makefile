# The two set-up commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
# The CPU wheel; on a GPU machine use e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu128".
TORCH ?= torch==2.13.0

.PHONY: install demo test lint

install:
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	$(PYTHON) -m ecmf_ray.cli demo

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install lint
	$(PYTHON) -m pytest -q
