# Two commands on a fresh clone: `make demo` runs the service with live demo data on SQLite,
# `make test` runs the whole test suite. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck format clean bench bench-full audit lock screenshot \
	check-wheel

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/csatdist serve --demo --database demo.db --log-format text

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# Benchmarks need PostgreSQL and NATS (scripts/ensure-services) and write bench/results, docs/performance.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py --set quick

bench-full: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py --set full
	$(BIN)/python bench/after_change.py
	$(BIN)/python bench/stream.py
	$(BIN)/python bench/ingest_floor.py
	$(BIN)/python bench/overload.py
	$(BIN)/python bench/abuse.py --repeat 2 --backends sqlite,postgresql
	$(BIN)/python bench/rollup_wait.py
	$(BIN)/python bench/history.py --backends sqlite,postgresql

# docs/dashboard.png from a real `serve --demo` in Debian's Chromium (run it when the dashboard changes).
screenshot: $(STAMP)
	$(BIN)/python scripts/screenshot.py

# The wheel built by `python -m build`, installed into a new venv and used outside the source tree.
check-wheel:
	scripts/check-wheel

# Known vulnerabilities in the locked dependencies (pip-audit); `make lock` re-pins them.
audit: $(STAMP)
	scripts/audit

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -v '^csatdist' > requirements.lock

format: $(STAMP)
	$(BIN)/ruff format src tests bench scripts
	$(BIN)/ruff check --fix src tests bench scripts

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
