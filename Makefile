# The README's two commands (`make demo`, `make test`) do all the set-up on a fresh machine:
# they create .venv if it is missing and install vidssl with its test extra into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade-strategy only-if-needed -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PYTHONUNBUFFERED=1 $(PY) tools/demo.py out=$(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) tools/benchmark.py suite=data
	$(PY) tools/benchmark.py suite=train
	$(PY) tools/benchmark.py suite=propagate
	$(PY) tools/benchmark.py suite=sinkhorn

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
