# Two entry points for a fresh machine: `make demo` and `make test`.
# The venv prefers the distribution's Python 3 when it can make venvs: Debian's
# build is optimised (PGO/LTO) and the daemon's hot path is interpreter-bound.
SYSTEM_PY := $(shell [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo /usr/bin/python3)
PYTHON ?= $(or $(SYSTEM_PY),python3)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench soak faults clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/replicator demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check replicator tests bench scripts
	$(VENV)/bin/ruff format --check replicator tests bench scripts
	$(VENV)/bin/mypy replicator
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check replicator tests bench scripts

# the randomized differential test for as long as asked, under CPU load; options after
# SOAK_ARGS, e.g. make soak SOAK_ARGS="--duration 1200 --pg 18 --faults kill,cut_target"
soak: $(VENV)/.installed
	$(PY) scripts/soak.py $(SOAK_ARGS)

# the restart and cut-route fault tests ROUNDS times in a row beside HOGS busy loops
faults: $(VENV)/.installed
	PYTHON=$(PY) scripts/fault_loop.sh $(or $(ROUNDS),30) $(or $(HOGS),1)

bench: $(VENV)/.installed
	$(PY) bench/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
