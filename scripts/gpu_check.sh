#!/usr/bin/env bash
# The GPU check of the speed layers (attention backends, compile + bf16), as one command.
#
# Run it on a machine with one CUDA GPU and its own PyTorch. First, on a machine with PyPI
# access, `make gpu-wheels` puts the two dependencies such an image lacks (rustbpe and the
# toy corpus) in .gpu_wheels/ as wheels for the GPU machine's Python; copy that folder along.
#     bash scripts/gpu_check.sh [bench options, e.g. --steps 200]
# It writes to $OUT (or book/results/gpu/): the GPU's name, the log of the attention and
# compile tests run on the GPU (the FA3 ones run where FA3 loads), and the figures of
# `python -m nanogpt_core bench --scale gpu` (bench_gpu.json). About 5 minutes on a Hopper card.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-book/results/gpu}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SPEEDRUN_PROGRESS=plain
if compgen -G ".gpu_wheels/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install --quiet --no-index --no-deps --target "$site" .gpu_wheels/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$site"
fi
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA GPU is visible to $python; this script checks the GPU paths (on a CPU: make bench)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu_check_nvidia_smi.txt"
# -o addopts=: the project's pytest options need pytest-socket, which a GPU image may lack
"$python" -m pytest -q -p no:cacheprovider -o addopts= -rs \
    tests/test_attention.py tests/test_compile.py tests/test_bench.py 2>&1 | tee "$out/gpu_check_pytest.txt"
tests=${PIPESTATUS[0]}
"$python" -m nanogpt_core bench --scale gpu --json "$out/bench_gpu.json" "$@" 2>&1 | tee "$out/gpu_check_bench.txt"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench; results in $out"
exit $(( tests || bench ))
