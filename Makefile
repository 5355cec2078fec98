# The dev loop. Every target creates/uses its own virtual environment (.venv) from a fresh clone.
#   make demo       train the seed MNIST CNN on pykernels and on torch.nn side by side
#   make test       the test suite (C++ kernels + Triton kernels in the interpreter, CPU only)
#   make bench      benchmarks vs torch on this machine -> bench/results/
#   make gpu-check  on a CUDA machine: tests on the GPU + GPU benchmarks -> bench/results/
#   make build      fast incremental rebuild of the C++ extension after editing csrc/
#   make fuzz       hypothesis fuzzing of every op against the NumPy reference (>= 1000 cases per op)
#   make sanitize   the C++ kernels built with ASan + UBSan (build/asan), C++-backend tests under them
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch first and pinned: this picks the CPU build on a CPU machine (no multi-GB CUDA wheels);
# the later installs see it already satisfies torch>=2.4 and add nothing.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench gpu-check build clean venv fuzz sanitize

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q numpy triton pytest hypothesis matplotlib mlxtend ninja "scikit-build-core>=0.10" "pybind11>=2.12"
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

# cases per op on the C++ backend, per op in the Triton interpreter (~1 s each), and the seed
# (a new one every run; FUZZ_SEED=n replays a run)
FUZZ_EXAMPLES ?= 1000
FUZZ_TRITON_EXAMPLES ?= 20
ifndef FUZZ_SEED
FUZZ_SEED := $(shell date +%s)
endif

# (a venv made before hypothesis joined the deps line gets it here)
fuzz: $(VENV)/.built
	@$(PY) -c "import hypothesis" 2>/dev/null || $(PIP) install -q hypothesis
	@echo "make fuzz: $(FUZZ_EXAMPLES) cases per op (cpp), $(FUZZ_TRITON_EXAMPLES) per op (Triton interpreter), FUZZ_SEED=$(FUZZ_SEED)"
	PYKERNELS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PYKERNELS_FUZZ_TRITON_EXAMPLES=$(FUZZ_TRITON_EXAMPLES) \
	PYKERNELS_FUZZ_KEEP_GOING=1 PYKERNELS_FUZZ_RANDOM=1 \
	$(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz.py --hypothesis-seed=$(FUZZ_SEED)

sanitize: $(VENV)/.deps
	@$(PY) -c "import hypothesis" 2>/dev/null || $(PIP) install -q hypothesis
	tools/sanitize.sh

clean:
	rm -rf build $(VENV)
