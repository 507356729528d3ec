#!/usr/bin/env bash
# Every GPU check of edgert in one run, for the GPU machine (H100/H200 with torch + Triton,
# nothing to download): the gpu-marked tests, the kernel benchmarks, and their RESULTS.md
# section, all written under OUT.
#
#   bash bench/gpu_check.sh OUT            # on the GPU machine (about 3 minutes)
#   bash bench/gpu_check.sh OUT --dry-run  # rehearsal on CPU: Triton's interpreter, tiny shapes
#
# Back here: .venv/bin/python bench/gpu_report.py OUT --write  (copies the section into
# bench/RESULTS.md). Installs nothing but edgert itself (no dependencies, no index).
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT [--dry-run]}
dry=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
export PYTHONUNBUFFERED=1
status=0

step() {  # step NAME COMMAND...: run, log, remember a failure, go on
    local name=$1; shift
    echo "== $name"
    if ! "$@"; then echo "!! $name failed"; status=1; fi
}

if ! "$python" -c "import edgert.trt_plugins" 2>/dev/null; then
    step "install edgert (no dependencies)" "$python" -m pip install -q --no-deps --no-build-isolation --no-index -e .
fi

if [ "$dry" = "--dry-run" ]; then
    export TRITON_INTERPRET=1
    bench_flag=--dry-run
    tests=(tests/test_op_parity.py -k triton)
else
    unset TRITON_INTERPRET
    bench_flag=
    # every test of the kernels, small shapes and gpu-marked real shapes, on CUDA
    tests=(tests/test_triton_headwise_decode.py tests/test_triton_vision.py tests/test_op_parity.py tests/test_torch_decode.py)
fi

step "environment" "$python" bench/gpu_report.py "$out" --environment
step "tests" "$python" -m pytest -q -p no:cacheprovider "${tests[@]}" --junitxml="$out/gpu-tests.xml"
step "headwise decode attention" "$python" bench/gpu_headwise_decode.py --out "$out" $bench_flag
step "vision attention" "$python" bench/gpu_vision_attention.py --out "$out" $bench_flag
step "end-to-end decode step" "$python" bench/gpu_decode_step.py --out "$out" $bench_flag
step "report" "$python" bench/gpu_report.py "$out"
exit $status
