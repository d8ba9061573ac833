# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency, extras and dev tools included, pinned for Python 3.11-3.13 (`make lock`).
CONSTRAINTS := requirements/constraints.txt

BENCH_STAMP := $(VENV)/.installed-bench
# Every script in bench/ but the module they share.
BENCHES := $(filter-out bench/harness.py,$(wildcard bench/*.py))

.PHONY: demo test bench bench-quick lint lock clean

$(BIN)/pip:
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/pip pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev,rabbitmq,nats]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jobs-bridge demo $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q $(ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev,rabbitmq,nats,bench]'
	@touch $(BENCH_STAMP)

# Numbers on stdout, numbers and plots in bench/results/ (about 5 minutes on 2 cores).
bench: $(BENCH_STAMP)
	@for b in $(BENCHES); do echo "== $$b"; s=$$(date +%s); $(BIN)/python $$b || exit 1; \
		echo "($$b: $$(($$(date +%s) - s)) s)"; done

# A smaller run of each, written under bench/results/quick/ (a smoke test, not results).
bench-quick: $(BENCH_STAMP)
	@for b in $(BENCHES); do echo "== $$b"; BENCH_QUICK=1 $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/mypy

# Re-pins after a change to the dependencies of pyproject.toml, keeping every pin it can;
# `make lock ARGS=--upgrade` moves everything to the newest versions. Needs only uv, not the
# project installed, so it works while pyproject.toml and the pins disagree.
lock: $(BIN)/pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) uv
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 --all-extras \
		--custom-compile-command "make lock" $(ARGS) pyproject.toml -o $(CONSTRAINTS)

clean:
	rm -rf $(VENV) var build .pytest_cache
