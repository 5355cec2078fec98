# The dev loop. Every target creates/uses its own virtual environment (.venv) from a fresh clone.
#   make demo       train the seeds' MLP on MNIST digits, pykernels vs torch side by side
#   make test       the test suite (C++ kernels + Triton kernels in the interpreter, CPU only)
#   make bench      benchmarks vs torch on this machine -> bench/results/
#   make gpu-check  on a CUDA machine: tests on the GPU + GPU benchmarks -> bench/results/
#   make build      fast incremental rebuild of the C++ extension after editing csrc/
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch first and pinned: this picks the CPU build on a CPU machine (no multi-GB CUDA wheels);
# the later installs see it already satisfies torch>=2.4 and add nothing.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench gpu-check build clean venv

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q numpy triton pytest matplotlib mlxtend ninja "scikit-build-core>=0.10" "pybind11>=2.12"
	touch $@

$(VENV)/.built: $(VENV)/.deps CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.h)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

venv: $(VENV)/.deps

build: $(VENV)/.deps
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $(VENV)/.built

demo: $(VENV)/.built
	$(PY) -m pykernels demo

test: $(VENV)/.built
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

bench: $(VENV)/.built
	$(PY) -m pykernels bench

gpu-check: $(VENV)/.built
	$(PY) -m pytest -q tests
	$(PY) -m pykernels bench --device cuda

clean:
	rm -rf build $(VENV)
