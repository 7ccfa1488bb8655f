# Thermalnet reproduction kit. `make demo` and `make test` do all set-up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean help

help:
	@echo "make setup  - Debian packages, venv, cached CPU Caffe build (run by demo/test)"
	@echo "make demo   - build the synthetic dataset, train, evaluate, write runs/demo/report.md"
	@echo "make test   - the test suite against the real Caffe"
	@echo "make bench  - benchmarks that print measured ratios"

setup:
	@bash tools/setup.sh

demo: setup
	$(PY) -m tools.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q tests $(TEST_ARGS)

bench: setup
	$(PY) -m tools.benchmark $(BENCH_ARGS)

clean:
	rm -rf runs build .pytest_cache
