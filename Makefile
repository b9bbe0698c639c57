# Two entry points on a fresh machine: `make demo` and `make test`.
# Both create .venv, install the CPU build of torch first (so nothing pulls a CUDA build),
# then the package with its test extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.memgeo-installed
OUT ?= runs/demo

.PHONY: demo test test-all install bench bench-fast bench-deps clean

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

# `make bench` runs the 14 scripts in benchmarks/ and `memgeo families` in their default (committed-benchmark) mode, printing
# their tables; outputs go to runs/ (BENCH_OUT) and nothing under benchmarks/results/ is overwritten
# (each script's docstring shows the --json/--md flags that rewrite those files). No script has a
# separate quick mode, so this takes about an hour on 2 cores, dominated by training (times from
# docs/benchmarks.md or the scripts' docstrings):
#   sharpness_cost ~3 min, training_throughput ~1.5 min, collapse speed <1 min, collapse neural
#   (6 generations x 2 loops), mmh_vonmises and mmh_audit (one 4000-step model each), lid (5 sets,
#   1-3 min each), demo_variations (6 demo runs, ~2.5 min each), caption_model (a few minutes; builds
#   the caption benchmark that prompt_detection and mitigation read, so those three run in this order),
#   prompt_families (tiny random-weight pipelines), memgeo families (~12 min), kernels (~10 min),
#   ray_overhead (~1 min), copies_scale end to end at 100,000 training vectors (~5 min). `make bench-fast` runs only the four that need no
#   trained model of their own beyond a few hundred steps (~6 min).
BENCH_OUT ?= runs/bench
BENCH := OMP_NUM_THREADS=1 $(PY)

bench-deps: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'

bench-fast: bench-deps
	$(BENCH) benchmarks/sharpness_cost.py
	$(BENCH) benchmarks/training_throughput.py
	$(BENCH) benchmarks/collapse.py speed --threads 1
	$(BENCH) benchmarks/prompt_families.py --threads 1

bench: bench-fast
	$(BENCH) benchmarks/collapse.py neural --threads 1 --out $(BENCH_OUT)/collapse_neural
	$(BENCH) benchmarks/mmh_vonmises.py --threads 1
	$(BENCH) benchmarks/mmh_audit.py --threads 1 --out $(BENCH_OUT)/mmh_overfit
	$(BENCH) benchmarks/lid.py --threads 1
	$(BENCH) benchmarks/demo_variations.py --out $(BENCH_OUT)/variations
	$(BENCH) benchmarks/caption_model.py --threads 1 --out $(BENCH_OUT)/caption_digits
	$(BENCH) benchmarks/prompt_detection.py --threads 1 --run $(BENCH_OUT)/caption_digits
	$(BENCH) benchmarks/mitigation.py --threads 1 --bench $(BENCH_OUT)/caption_digits --out $(BENCH_OUT)/mitigation
	$(BENCH) $(VENV)/bin/memgeo families --out $(BENCH_OUT)/families
	$(BENCH) benchmarks/kernels.py --threads-list 1 2
	$(BENCH) benchmarks/ray_overhead.py --prompts 64 --workers 2
	$(BENCH) benchmarks/copies_scale.py --e2e --mnist --sizes 100000 --e2e-test 2000 --threads 1 \
		--e2e-backends faiss,faiss-ivf --data-dir $(BENCH_OUT)/copies_scale

clean:
	rm -rf $(VENV) runs .pytest_cache
