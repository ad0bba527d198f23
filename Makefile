# The README's two commands (`make demo`, `make test`) do all the set-up on a fresh machine:
# they create .venv if it is missing and install vidssl with its test extra into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
BENCH_DIR ?= bench_out

LOCK := requirements.lock

.PHONY: install check-install lock demo test test-fast bench clean

install: $(STAMP)

# Every package comes from the lock file (pip constraints), so a fresh machine gets the tested versions.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --constraint $(LOCK) -e '.[test]'
	touch $(STAMP)

# Fail fast, in one line, when the compiled stack (torch, torchvision, torchaudio, av, decord) does not load.
check-install: $(STAMP)
	$(PY) -m vidssl.app.install_check

# Re-resolve pyproject.toml's ranges in a throwaway venv and pin what pip picks today (see the README).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -e '.[test]'
	.lock-venv/bin/python -m vidssl.app.install_check
	{ printf '%s\n' \
	  "# The whole dependency tree, pinned: \`make install\` installs vidssl with this file as pip's constraints," \
	  "# so every fresh machine gets these exact versions. Regenerate with \`make lock\` (see the README)." \
	  "# Made with Python 3.11 on linux x86_64; the nvidia-*/cuda-*/triton pins apply only where torch needs them."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK)
	rm -rf .lock-venv

demo: check-install
	PYTHONUNBUFFERED=1 $(PY) -m vidssl.app.demo out=$(DEMO_DIR)

test: check-install
	$(PY) -m pytest -q --durations=15

test-fast: check-install
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	for suite in data train propagate sinkhorn flow; do $(PY) -m vidssl.app.benchmark suite=$$suite out=$(BENCH_DIR) || exit 1; done

clean:
	rm -rf $(DEMO_DIR) $(BENCH_DIR) .pytest_cache
