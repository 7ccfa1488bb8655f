# Thermalnet reproduction kit. `make demo` and `make test` do all set-up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

# The GPU build: NVIDIA's CUDA wheels, no GPU needed to compile (tools/install_caffe.sh).
# docker/Dockerfile.gpu builds with the same flags (tests/test_docker.py keeps them in step).
GPU_FLAGS := --gpu
# CUDA_ARCH="-gencode arch=compute_90,code=sm_90" builds one architecture (faster).
CUDA_ARCH ?=

.PHONY: setup gpu-build gpu-setup cpu-setup demo test bench mutation clean help

help:
	@echo "make setup  - Debian packages, venv, cached CPU Caffe build (run by demo/test)"
	@echo "make demo   - build the synthetic dataset, train, evaluate, write runs/demo/report.md"
	@echo "make test   - the test suite against the real Caffe"
	@echo "make bench  - benchmarks that print measured ratios"
	@echo "make mutation - mutation testing of the core modules (slow, not in CI; MUTATION_ARGS=\"solver metrics\")"
	@echo "make gpu-build - only build and cache the GPU Caffe (tests/test_gpu_build.py checks it)"
	@echo "make gpu-setup - GPU Caffe (CUDA 13 wheels, cached; long compile) linked into the venv instead"
	@echo "make cpu-setup - back to the CPU Caffe"

setup:
	@bash tools/setup.sh

gpu-build: setup
	@PYTHON=$(PY) bash tools/install_caffe.sh $(GPU_FLAGS) $(if $(CUDA_ARCH),--cuda-arch "$(CUDA_ARCH)")

gpu-setup:
	@CAFFE_BUILD_FLAGS="$(GPU_FLAGS)" CUDA_ARCH="$(CUDA_ARCH)" bash tools/setup.sh

cpu-setup:
	@CAFFE_BUILD_FLAGS= bash tools/setup.sh

demo: setup
	$(PY) -m tools.demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -rs tests $(TEST_ARGS)

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
