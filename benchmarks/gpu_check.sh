#!/usr/bin/env bash
# One prepared check for a GPU machine (offline, torch already installed there):
#   benchmarks/gpu_check.sh [OUTDIR]
# builds fastnas._C in place with the CUDA kernels, runs the whole test suite (CUDA cases included),
# runs the GPU op benchmark (CUDA events, warm-up excluded, medians, GB/s against the measured copy
# bandwidth) and prints a short table last. Full results go to OUTDIR (default benchmarks/results/gpu).
# Meant to finish in under 5 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FASTNAS_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
status=0

{ python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  nvcc --version 2>/dev/null | tail -2; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

start=$(date +%s)
if ! python setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
PYTHONPATH=$PWD python -m fastnas.info --demo > "$OUT/info.txt" 2>&1 || status=1
cat "$OUT/info.txt"

PYTHONPATH=$PWD python -m pytest -q -p no:cacheprovider tests > "$OUT/tests.log" 2>&1 || status=1
tail -5 "$OUT/tests.log"

PYTHONPATH=$PWD python benchmarks/compare_ops.py --device cuda --out "$OUT" > "$OUT/bench.log" 2>&1 || status=1
echo
echo "== GPU op benchmark ($OUT/ops_cuda.md) =="
cat "$OUT/ops_cuda.md" 2>/dev/null || tail -20 "$OUT/bench.log"
exit $status
