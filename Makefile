# Thermalnet reproduction kit. `make demo` and `make test` do all set-up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

# The GPU build: NVIDIA's CUDA wheels, no GPU needed to compile (tools/install_caffe.sh).
# docker/Dockerfile.gpu builds with the same flags (tests/test_docker.py keeps them in step).
GPU_FLAGS := --gpu
# CUDA_ARCH="-gencode arch=compute_90,code=sm_90" builds one architecture (faster).
CUDA_ARCH ?=

.PHONY: setup gpu-build gpu-setup gpu-bundle cpu-setup demo test test-digits digits-local bench mutation clean help

help:
	@echo "make setup  - Debian packages, venv, cached CPU Caffe build (run by demo/test)"
	@echo "make demo   - build the synthetic dataset, train, evaluate, write runs/demo/report.md"
	@echo "make test   - the test suite against the real Caffe"
	@echo "make test-digits DIGITS_ROOT=DIR - the DIGITS client's tests against real DIGITS 6.1.1 (a checkout)"
	@echo "make digits-local DIGITS_SRC=DIR BOOST_PYTHON_SRC=DIR - build and start DIGITS 6.1.1 on 127.0.0.1"
	@echo "make bench  - benchmarks that print measured ratios"
	@echo "make mutation - mutation testing of the core modules (slow, not in CI; MUTATION_ARGS=\"solver metrics\")"
	@echo "make gpu-build - only build and cache the GPU Caffe (tests/test_gpu_build.py checks it)"
	@echo "make gpu-setup - GPU Caffe (CUDA 13 wheels, cached; long compile) linked into the venv instead"
	@echo "make gpu-bundle - GPU Caffe for Python 3.12 packed for a lent GPU machine (tools/extra/gpu_bundle.sh)"
	@echo "make cpu-setup - back to the CPU Caffe"

setup:
	@bash tools/setup.sh

gpu-build: setup
	@PYTHON=$(PY) bash tools/install_caffe.sh $(GPU_FLAGS) $(if $(CUDA_ARCH),--cuda-arch "$(CUDA_ARCH)")

gpu-setup:
	@CAFFE_BUILD_FLAGS="$(GPU_FLAGS)" CUDA_ARCH="$(CUDA_ARCH)" bash tools/setup.sh

# For the lent GPU machine (no package index): sm_90 unless CUDA_ARCH names others.
gpu-bundle: setup
	@bash tools/extra/gpu_bundle.sh $(if $(CUDA_ARCH),--cuda-arch "$(CUDA_ARCH)")

cpu-setup:
	@CAFFE_BUILD_FLAGS= bash tools/setup.sh

demo: setup
	$(PY) -m tools.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -rs tests $(TEST_ARGS)

# Real DIGITS (tools/extra/digits_local.sh: Python 2.7, the kit's Caffe built for it, 127.0.0.1).
# The tests start and stop their own server on a free port; without DIGITS_ROOT they skip, saying why.
test-digits: setup
	DIGITS_ROOT=$(DIGITS_ROOT) $(PY) -m pytest -q -rs -m real_digits tests/test_digits_client.py $(TEST_ARGS)

DIGITS_PORT ?= 5000
digits-local:
	@test -n "$(DIGITS_SRC)" || { echo "make digits-local needs DIGITS_SRC=<DIGITS checkout at v6.1.1>" >&2; exit 2; }
	bash tools/extra/digits_local.sh setup --digits "$(DIGITS_SRC)" $(if $(BOOST_PYTHON_SRC),--boost-python "$(BOOST_PYTHON_SRC)")
	bash tools/extra/digits_local.sh start --digits "$(DIGITS_SRC)" --port $(DIGITS_PORT)

bench: setup
	$(PY) -m tools.benchmark $(BENCH_ARGS)

# Mutation testing (tools/mutation.py): cosmic-ray in its own venv, so CI and `make setup` never install it.
MUTATION_VENV ?= .venv-mutation
$(MUTATION_VENV)/.installed: requirements-mutation.txt
	python3 -m venv $(MUTATION_VENV)
	$(MUTATION_VENV)/bin/python -m pip install -q -r requirements-mutation.txt
	touch $@

mutation: setup $(MUTATION_VENV)/.installed
	nice -n 10 $(PY) -m tools.mutation --cosmic-ray-bin $(MUTATION_VENV)/bin $(MUTATION_ARGS)

clean:
	rm -rf runs build .pytest_cache
