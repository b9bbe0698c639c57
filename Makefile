# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch first (so nothing pulls a CUDA build),
# then the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memgeo-installed
OUT ?= runs/demo

.PHONY: demo test test-all install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/memgeo demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) benchmarks/sharpness_cost.py
	$(PY) benchmarks/training_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
