#!/usr/bin/env bash
# One prepared check for a GPU machine (offline, torch already installed there):
#   benchmarks/gpu_check.sh [OUTDIR]
# builds fastnas._C in place with the CUDA kernels, runs the tests that touch the CUDA kernels (every
# `cuda`-marked case, the sync-free steps, and the build tests; the CPU-only tests are left to CI),
# then measures, most important first: the retraining throughput and loss curves (issue 20, target 1),
# one iteration per method preset with CUDA graphs (target 3), the default search with one CIFAR-10-sized
# epoch per stage (target 2), the same iterations eager (side by side), the compiled retraining step and
# the fused-op benchmark. It ends with short tables and `targets.json`, one flat object written from every
# result file OUTDIR holds.
# Full results go to OUTDIR (default benchmarks/results/gpu).
#
# Time: a device call runs 10 minutes at most, and everything above takes longer than that on an H200.
# The script keeps to a budget (GPU_CHECK_BUDGET_S, default 560 s from its start): each command's own time
# limit is cut to what is left, a step that no longer fits is skipped and named in OUTDIR/skipped.txt, and
# targets.json is always written. A step that finished leaves OUTDIR/done/STEP (a search cut short resumes
# from its checkpoint), so the same command over the same OUTDIR (the first call's files brought back into
# it) runs only what is still missing:
#   benchmarks/gpu_check.sh OUT          # call 1: build, tests, train, graphs, search, ... as time allows
#   benchmarks/gpu_check.sh OUT          # call 2, OUT holding call 1's files: the steps call 1 skipped
# GPU_CHECK_STEPS="train search" selects steps by name (tests train graphs search probe method compile ops; a
# step done in OUTDIR is still skipped, delete OUTDIR/done/STEP to measure it again). GPU_CHECK_DRY=1 prints
# the plan (OUTDIR/plan.txt: each command with the time limit it would get, as if every command used its
# whole limit) without building or running anything; CI runs it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
PY=${PYTHON:-$(command -v python3 || command -v python)}
STEPS=" ${GPU_CHECK_STEPS:-tests train graphs search probe method compile ops} "
BUDGET=${GPU_CHECK_BUDGET_S:-560}
RESERVE=25  # seconds kept for the tables and targets.json at the end
DRY=${GPU_CHECK_DRY:-}
mkdir -p "$OUT/done"
rm -f "$OUT/skipped.txt" "$OUT/plan.txt"
export PYTHONUNBUFFERED=1 FASTNAS_CUDA=1 PYTHONPATH=$PWD
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
status=0
T0=$(date +%s)
used=0  # in a dry run: the seconds the plan has used so far (each command its whole limit)
elapsed() { if [ -n "$DRY" ]; then echo "$used"; else echo $(( $(date +%s) - T0 )); fi; }

# want STEP: selected, and not done by an earlier call over this OUTDIR
want() { [[ "$STEPS" == *" $1 "* ]] && [ ! -e "$OUT/done/$1" ]; }
# run LIMIT LOG CMD...: CMD under `timeout`, its output appended to LOG, its limit cut to the budget left;
# skipped (named in skipped.txt; not a failure) when under 20 s are left. Sets cut=1 when the budget, not
# the command, ended or skipped it. In a dry run: one line in plan.txt, and nothing is written to LOG.
cut=0
run() {
  local limit=$1 log=$2 left; shift 2
  left=$(( BUDGET - RESERVE - $(elapsed) ))
  if (( left < 20 )); then
    echo "skipped, out of time (${left} s left of ${BUDGET}): $*" | tee -a "$OUT/skipped.txt"; cut=1; return 0
  fi
  if (( limit > left )); then limit=$left; local capped=1; else local capped=0; fi
  if [ -n "$DRY" ]; then
    echo "$(elapsed) s +${limit} s: $*" >> "$OUT/plan.txt"; used=$(( used + limit )); return 0
  fi
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  if (( rc == 124 && capped )); then
    echo "cut by the budget after ${limit} s: $*" | tee -a "$OUT/skipped.txt"; cut=1
  fi
  return $rc
}
# begin STEP / finish STEP: a step that ran whole (not cut by the budget) is marked done in OUTDIR
begin() { cut=0; echo "== step $1 at $(elapsed) s"; }
finish() { if [ -z "$DRY" ] && (( cut == 0 )); then date -Is > "$OUT/done/$1"; fi; }

if [ -z "$DRY" ]; then
{ $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  nvcc --version 2>/dev/null | tail -2; } > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"

# The system g++ builds the extension. Measured on the H200 image (2026-11-29): the build picked
# /opt/gcc/bin/g++ there, and an extension built with that compiler segfaults whenever a C++ error is raised
# (any TORCH_CHECK, on CPU and CUDA alike), while the same sources built with /usr/bin/g++ raise cleanly.
# Set FASTNAS_KEEP_CXX=1 to build with $CXX anyway.
if [ -z "${FASTNAS_KEEP_CXX:-}" ] && [ -x /usr/bin/g++ ]; then
  echo "building with /usr/bin/g++ (CXX was '${CXX:-unset}', CC '${CC:-unset}'; see the comment above)"
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
if ! timeout 300 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1
fi
echo "build: $(elapsed) s"
timeout 60 $PY -m fastnas.info --demo >> "$OUT/info.txt" 2>&1 || status=1
tail -8 "$OUT/info.txt"
fi

# Probe: a bad argument to the raw op must raise RuntimeError on each device. A crash would end the test
# run below, so on a crash: a native backtrace (cuda-gdb debugs host code too) and the same probe against
# a CPU-only build go to $OUT/crash.txt, and the bad-input tests are left out of the runs below.
KSEL=()
if [ -z "$DRY" ]; then
PROBE=$(mktemp --suffix .py)
cat > "$PROBE" <<'PYEOF'
import torch
import fastnas.ops  # noqa: F401  (loads fastnas._C)
for dev in ["cpu", "cuda"]:
    try:
        torch.ops.fastnas.weighted_sum(torch.ones(3, device=dev), [torch.ones(4, device=dev)] * 2)
        print(dev, "NO ERROR RAISED")
    except RuntimeError as e:
        print(dev, "raised:", str(e).splitlines()[0])
PYEOF
if ! timeout 60 $PY "$PROBE" > "$OUT/probe.txt" 2>&1; then
  status=1; KSEL=(-k "not rejects_bad_input")
  { echo "== probe output"; cat "$OUT/probe.txt"; gcc --version | head -1
    echo "== native backtrace"
    timeout 90 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY "$PROBE" 2>&1 \
      | grep -v "^\[New Thread\|^\[Thread" | tail -80
    echo "== compilers and libraries"
    command -v g++ c++ gcc; g++ --version | head -1; /usr/bin/g++ --version 2>/dev/null | head -1
    ldd fastnas/_C*.so | grep -E "stdc|gcc|c10|torch" | head
    echo "== the same probe against CPU-only builds: default compiler (a), /usr/bin/g++ (b)"
    for v in a b; do
      ( rm -rf /tmp/cpu$v; if [ $v = b ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi
        FASTNAS_CUDA=0 timeout 150 $PY setup.py build_ext -b /tmp/cpu$v -t /tmp/cpu$v-tmp > /tmp/cpu$v.log 2>&1 \
          && cp fastnas/*.py /tmp/cpu$v/fastnas/ && PYTHONPATH=/tmp/cpu$v timeout 60 $PY "$PROBE" > /tmp/probe$v.txt 2>&1
        echo "rc=$?" >> /tmp/probe$v.txt ) &
    done
    wait
    for v in a b; do echo "-- build $v:"; grep -m1 -o "^[^ ]*g++ " /tmp/cpu$v.log; tail -4 /tmp/probe$v.txt; done
  } > "$OUT/crash.txt" 2>&1
fi
echo "probe (a bad argument raises, no crash):"; tail -3 "$OUT/probe.txt"
fi

# Tests: every cuda-marked case but the sync-free ones, which run alone for target 4's verdict (no host-
# device synchronisation in a steady-state softmax-family search iteration or retraining step), then the
# build tests (the extension as this machine's toolchain built it raises its errors; the CPU op tests ran
# in CI, and the probe above covers this build's errors).
sync_free=null
if want tests; then
  begin tests
  run 200 "$OUT/tests.log" $PY -m pytest -q -p no:cacheprovider -m cuda "${KSEL[@]}" --ignore=tests/test_sync_free.py tests \
    || status=1
  c0=$cut; cut=0
  if run 120 "$OUT/sync_free.log" $PY -m pytest -q -p no:cacheprovider tests/test_sync_free.py
  then sync_free=true; else sync_free=false; fi
  if (( cut )) || [ -n "$DRY" ]; then sync_free=null; fi  # no verdict from a run the budget ended
  cut=$(( c0 | cut ))
  echo "sync-free steps: $sync_free ($OUT/sync_free.log)"
  run 60 "$OUT/tests.log" $PY -m pytest -q -p no:cacheprovider tests/test_build.py "${KSEL[@]}" || status=1
  grep -E "passed|failed|error" "$OUT/tests.log" 2>/dev/null | tail -4
  finish tests
fi

# Retraining throughput (issue 20, target 1: >= 4,000 images/s at batch 96, 600 epochs in 2.1 hours): the
# bare step (fp32, bf16; $OUT/bare) and fastnas train's own step (data on the device, cutout, aux head,
# drop-path) eager and with --cuda-graphs, side by side; batch 128 for the graphed modes, and the fastest of
# them with cuDNN's heuristics instead of its autotuner (--no-cudnn-benchmark; on since 2026-12-03). The
# trainer configs train two seeds for 124 steps each and record every step's loss: loss_curve.py then says
# whether each faster mode trains as eager fp32 does, within seed-to-seed noise ($OUT/loss_curve.{md,png}).
# The compiled step comes later (its compile takes minutes): the `compile` step below.
if want train; then
  begin train
  run 240 "$OUT/bench.log" $PY benchmarks/train_speed.py --device cuda --batch 96 --steps 120 --seeds 2 \
    --configs trainer,trainer+cuda_graphs,trainer+bf16+cuda_graphs,trainer+bf16+channels_last+cuda_graphs \
    --out "$OUT" || status=1
  run 100 "$OUT/bench.log" $PY benchmarks/train_speed.py --device cuda --batch 128 --steps 20 \
    --configs trainer+cuda_graphs,trainer+bf16+channels_last+cuda_graphs,trainer+bf16+channels_last+cuda_graphs+no_cudnn_benchmark \
    --out "$OUT/b128" || status=1
  run 90 "$OUT/bench.log" $PY benchmarks/train_speed.py --device cuda --batch 96 --steps 20 --configs fp32,bf16 \
    --out "$OUT/bare" || status=1
  finish train
fi
# One search iteration per preset with --cuda-graphs (C=16, 8 cells, batch 32; issue 20, target 3: the
# softmax family's rates against the eager table of 2026-11-29; each iteration replayed as one CUDA graph;
# progressive: its hard sampler's architecture step alone; the column "mode" says which, or why not).
# Then the hard sampler's weight step with --op-graphs as well (each sampled convolution's forward and
# backward replayed from its own graphs, every candidate captured before the first step): progressive
# against the row above, gdas (not otherwise graphed) against the eager table. For the hard sampler each
# run also times its warm-up step (weights only) with the next sample drawn a step early, as the epoch
# loop runs it, against drawn when needed (targets.json: warmup_draw_ahead).
if want graphs; then
  begin graphs
  run 150 "$OUT/bench.log" $PY benchmarks/method_step.py --device cuda --iters 10 --cuda-graphs \
    --presets darts darts2 pcdarts drnas pdarts progressive --out "$OUT/graphs" || status=1
  run 150 "$OUT/bench.log" $PY benchmarks/method_step.py --device cuda --iters 10 --cuda-graphs \
    --op-graphs --presets progressive gdas --out "$OUT/op_graphs" || status=1
  finish graphs
fi
# How long a whole search takes (issue 20, target 2): the default preset itself, its three stages (5 cells /
# 8 ops, 11 / 5, 17 / 3 after its own pruning; C=16; batch 96; gumbel-hard; weight + architecture step) one
# CIFAR-10-sized epoch each (25,000 + 25,000 generated images), each measured, none projected. With
# --cuda-graphs unless SEARCH_GRAPHS=0 (the architecture step replayed; a failed capture goes on eagerly, and
# the log says so). The run checkpoints every epoch: a call the budget cut short is resumed by the next.
SEARCH_FLAGS=(); [ "${SEARCH_GRAPHS:-1}" = 1 ] && SEARCH_FLAGS=(--cuda-graphs)
if want search; then
  begin search
  # --op-graphs too when this OUTDIR's progressive row was faster with it (SEARCH_OP_GRAPHS=0/1 decides instead)
  if [ -z "${SEARCH_OP_GRAPHS:-}" ]; then
    SEARCH_OP_GRAPHS=$($PY benchmarks/gpu_targets.py "$OUT" --op-graphs-pay)
  fi
  [ "${SEARCH_GRAPHS:-1}" = 1 ] && [ "$SEARCH_OP_GRAPHS" = 1 ] && SEARCH_FLAGS+=(--op-graphs)
  if [ -e "$OUT/search/checkpoint.pt" ]; then  # an earlier call's run, cut short: resumed where it stopped
    echo "search: resuming $OUT/search"
    run 420 "$OUT/search.log" $PY -m fastnas.search --resume "$OUT/search" --device cuda || status=1
  else
    echo "search stage epochs with: ${SEARCH_FLAGS[*]:-eager}"
    run 420 "$OUT/search.log" $PY -m fastnas.search --preset progressive --device cuda --embedded-size 50000 \
      --epochs 1 1 1 --warmup-epochs 0 0 0 --no-plots --derived-eval-images 0 "${SEARCH_FLAGS[@]}" \
      --out "$OUT/search" || status=1
  fi
  echo
  echo "== the default search, one CIFAR-10-sized epoch per stage ($OUT/search.log) =="
  grep -E "epoch 1/1|search time|CUDA graph|resumed" "$OUT/search.log" 2>/dev/null
  finish search
fi
# A feasibility probe for the next lever of the hard sampler (seconds): one edge's candidates in one CUDA
# graph, each in a conditional node on the sampled index (no index read, no per-op launches); does it
# capture, match eager, and how fast is a replay against the op run eagerly ($OUT/probe_conditional.md).
if want probe; then
  begin probe
  run 90 "$OUT/bench.log" $PY benchmarks/probe_conditional.py --out "$OUT" || status=1
  finish probe
fi
# The same iteration eager, every preset (the side-by-side table for the graphed rows above; after the
# search, which matters more, as the table of 2026-11-29 has eager rates already, with cuDNN's heuristics).
if want method; then
  begin method
  run 150 "$OUT/bench.log" $PY benchmarks/method_step.py --device cuda --iters 5 --out "$OUT" || status=1
  # cuDNN's autotuner (on by default since 2026-12-03; the table of 2026-11-29 ran without it) against its
  # heuristics, on a softmax preset and the default one
  run 90 "$OUT/bench.log" $PY benchmarks/method_step.py --device cuda --iters 5 --presets darts progressive \
    --no-cudnn-benchmark --out "$OUT/no_cudnn_benchmark" || status=1
  finish method
fi
# fastnas train --compile --compile-mode reduce-overhead (inductor's fused kernels, replayed as CUDA graphs)
# with bf16 + channels_last: the fused casts and elementwise work that bf16 without compile pays as extra
# launches. Compiling DARTS_V2 takes minutes (249 s on the 2-core CPU), so it runs once the targets above are
# measured, beside eager fp32 again for its loss curve ($OUT/compile/).
if want compile; then
  begin compile
  run 300 "$OUT/bench.log" $PY benchmarks/train_speed.py --device cuda --batch 96 --steps 120 --seeds 2 \
    --configs trainer,trainer+bf16+channels_last+compile --out "$OUT/compile" || status=1
  finish compile
fi
# The fused ops against their baselines (CUDA events, warm-up excluded, medians, GB/s against the measured
# copy bandwidth): measured on 2026-11-29, so last.
if want ops; then
  begin ops
  run 120 "$OUT/ops_bench.log" $PY benchmarks/compare_ops.py --device cuda --out "$OUT" || status=1
  finish ops
fi
[ -n "$DRY" ] && { echo "dry run, the plan ($OUT/plan.txt):"; cat "$OUT/plan.txt" 2>/dev/null; }
[ -s "$OUT/skipped.txt" ] && { echo "skipped or cut by the budget ($OUT/skipped.txt):"; cat "$OUT/skipped.txt"; }
echo "== CUDA graph conditional nodes for the hard sampler's ops? ($OUT/probe_conditional.md) =="
cat "$OUT/probe_conditional.md" 2>/dev/null
echo "== method presets, one iteration ($OUT/method_step.md) =="
cat "$OUT/method_step.md" 2>/dev/null
echo "== two of them with cuDNN's heuristics instead of its autotuner ($OUT/no_cudnn_benchmark/method_step.md) =="
cat "$OUT/no_cudnn_benchmark/method_step.md" 2>/dev/null
echo "== the same with --cuda-graphs ($OUT/graphs/method_step.md) =="
cat "$OUT/graphs/method_step.md" 2>/dev/null
echo "== the hard sampler with --cuda-graphs --op-graphs ($OUT/op_graphs/method_step.md) =="
cat "$OUT/op_graphs/method_step.md" 2>/dev/null
echo
echo "== GPU op benchmark ($OUT/ops_cuda.md) =="
cat "$OUT/ops_cuda.md" 2>/dev/null || tail -20 "$OUT/ops_bench.log" 2>/dev/null
echo "== retraining throughput ($OUT/train_speed_cuda.md, bare steps: $OUT/bare/, batch 128: $OUT/b128/) =="
cat "$OUT/train_speed_cuda.md" "$OUT/bare/train_speed_cuda.md" "$OUT/b128/train_speed_cuda.md" 2>/dev/null
echo "== the same loss curve as eager fp32? ($OUT/loss_curve.md, loss_curve.png) =="
cat "$OUT/loss_curve.md" 2>/dev/null
echo "== compiled retraining ($OUT/compile/) =="
cat "$OUT/compile/train_speed_cuda.md" "$OUT/compile/loss_curve.md" 2>/dev/null
# Issue 20's targets from every result file OUTDIR holds: targets.json (one flat object the next check
# reads; what was not measured is null), targets.md (goal, measured, met) and targets.png.
$PY benchmarks/gpu_targets.py "$OUT" --sync-free "$sync_free" || status=1
exit $status
