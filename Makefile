# The two set-up commands of the README. Each creates .venv when missing and installs the project.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.phonorm-installed

.PHONY: demo test test-all lint typecheck install clean

install: $(STAMP)

# torch first, pinned to the CPU build these machines carry on disk: anything else pulls gigabytes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@# UMAP's numba code compiled once here (cached in .venv), not in the first analysis: ~1.5 min
	$(PY) -c "from phonorm.analysis.projection import warm_up; print(f'UMAP compiled in {warm_up():.0f} s')"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/phonorm demo

# Fast tier for everyday work (a few minutes): everything but the tests marked slow.
test: $(STAMP)
	@bash scripts/ensure-chromium.sh || true
	$(PY) -m pytest -q -m "not slow" --durations=15

# Everything, the slow end-to-end runs included (what CI runs).
test-all: $(STAMP)
	@bash scripts/ensure-chromium.sh || true
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

typecheck: lint

clean:
	rm -rf $(VENV) build *.egg-info
