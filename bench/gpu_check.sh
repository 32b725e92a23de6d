#!/usr/bin/env bash
# The project's one prepared device script: on a machine with an NVIDIA GPU, build with the
# CUDA kernels, the static kernel report, the CUDA tests, compute-sanitizer (memcheck,
# racecheck) on bench/sanitize_cases.py, the GPU benchmark sweep, and Nsight Compute on the
# largest case of every op (bench/ncu_cases.py). Everything lands under $OUT as at most 8
# files (all the device tool brings back; the build log only when the build fails). Sized for one call of about 8 minutes on an H200; each step
# has its own time limit and a failed step does not stop the others.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh            # full
#   OUT=/tmp/gpu bash bench/gpu_check.sh --quick    # short benchmark, quick sanitizer cases
#
# Knobs (environment), for a second call that must fit what is left of the device time:
#   STEPS="build kernels tests san bench ncu"  the steps to run (build is always needed)
#   TESTS_K=EXPR        pytest -k filter of the CUDA tests      SAN_CASES=--quick
#   BENCH_OPS=a,b       BENCH_DTYPES=fp32,bf16 (one JSON each)  BENCH_IMPLS=fused,eager,compile
#   BENCH_MIN_TIME=s    NCU_K=regex:...  (kernels Nsight Compute profiles)
# The e2e rows (yolo_loss, retinanet_loss) appear when ultralytics is importable there: the
# device has no network, so carry its wheels (the device tool's README, "Notes") and put
# them on PYTHONPATH before this script. Likewise torch-linear-assignment (pure Python; its
# Triton solver is what tests/test_match.py's CUDA solver test runs, skipped without it).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
export PYTHONUNBUFFERED=1 FORCE_CUDA=1
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
STEPS=${STEPS:-build kernels tests san bench ncu}
want() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }
START=$(date +%s)
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME LIMIT_S CMD...: run, record status and seconds
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s, at +$((t0 - START))s)"
  timeout "$limit" "$@"
  local rc=$?
  note "$(printf '%-12s rc=%-3s %4ss' "$name" "$rc" "$(( $(date +%s) - t0 ))")"
  return $rc
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi -L 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
  $PY -c 'import torch,sys;print("python",sys.version.split()[0],"torch",torch.__version__,"cuda",torch.version.cuda)'
  nvcc --version 2>&1 | tail -1
} >> "$SUMMARY" 2>&1

# 1. build (ptxas usage of every kernel goes into the build log)
DETLOSS_PTXAS_VERBOSE=1 step build 240 \
  $PY -m pip install --no-build-isolation --no-deps -v -e . > /tmp/detloss-build.log 2>&1 \
  || { cp /tmp/detloss-build.log "$OUT/build.log"; tail -40 "$OUT/build.log"
       note "build failed: see build.log"; exit 1; }
$PY -m detloss_cuda info >> "$SUMMARY" 2>&1

# 2. static kernel report (registers, spills, load widths, occupancy) from this build
want kernels && step kernels 60 $PY bench/kernel_report.py --markdown "$OUT/kernel-report.md" > /dev/null 2>> "$SUMMARY"
want kernels && head -1 "$OUT/kernel-report.md" >> "$SUMMARY" 2>/dev/null

# 3. the CUDA tests: every cuda-marked case, the device-parametrised ones included (the CPU
#    ones run in CI)
#    (the whole suite, unfiltered unless TESTS_K is given: past-2^31 cases, CUDA graphs,
#    streams, AMP, reduce-overhead compile included); parallel workers where pytest-xdist is
#    carried (TESTS_WORKERS, default 4: one GPU has room for them)
XDIST=""
$PY -c 'import xdist' 2>/dev/null && XDIST="-n ${TESTS_WORKERS:-4}"
if want tests; then
  step tests ${TESTS_LIMIT:-300} $PY -m pytest -q -p no:cacheprovider $XDIST -m cuda \
    ${TESTS_K:+-k "$TESTS_K"} tests > "$OUT/tests.txt" 2>&1
  tail -15 "$OUT/tests.txt"
  grep -E "passed|failed|error" "$OUT/tests.txt" | tail -1 >> "$SUMMARY"
fi

# 4. compute-sanitizer on small cases, every allocation separate
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
      /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
if ! want san; then
  :
elif [ -n "$SAN" ]; then
  for tool in memcheck racecheck; do
    # memcheck: the full case set (every kernel instantiation; tests/test_emulator.py checks
    # that under the emulator) unless --quick; racecheck: the quick set, which runs the shared
    # memory code (block_sum, the matrix tiles) and costs a third of the time
    cases="${SAN_CASES-$QUICK}"
    [ "$tool" = racecheck ] && cases="${SAN_CASES---quick}"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "san-$tool" 70 \
      "$SAN" --tool $tool --error-exitcode 9 $PY bench/sanitize_cases.py $cases \
      >> "$OUT/sanitizer.txt" 2>&1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all cases ran" "$OUT/sanitizer.txt" | tail -2 >> "$SUMMARY"
  done
else
  note "compute-sanitizer: not found on this machine"
fi

# 5. Nsight Compute: bandwidth, occupancy and stalls of every op's kernels at 32 Mi elements
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if ! want ncu; then
  :
elif [ -n "$NCU" ]; then
  step ncu 80 "$NCU" --clock-control none --kernel-name-base demangled --profile-from-start off --csv --page details \
    --section SpeedOfLight --section Occupancy --section WarpStateStats \
    -k "${NCU_K:-regex:map_reduce_kernel|box_matrix_kernel}" $PY bench/ncu_cases.py > "$OUT/ncu.csv" 2>&1
  grep -c '"DRAM Throughput"' "$OUT/ncu.csv" | sed 's/^/ncu kernels profiled: /' >> "$SUMMARY"
else
  note "ncu: not found on this machine"
fi

# 6. the GPU benchmark, one JSON per dtype, saved row by row (markdown and plot are made
#    from the JSON afterwards)
if want bench; then
  for dt in $(echo "${BENCH_DTYPES:-fp32}" | tr , ' '); do
    step "bench-$dt" ${BENCH_LIMIT:-150} $PY -m detloss_cuda bench --devices cuda $QUICK \
      --ops ${BENCH_OPS:-all} --dtypes $dt --impls ${BENCH_IMPLS:-fused,eager,compile} \
      --min-time ${BENCH_MIN_TIME:-0.02} --json "$OUT/bench-cuda-$dt.json" >> "$OUT/bench.txt" 2>&1
  done
  grep -v Warning "$OUT/bench.txt" | tail -40
fi

note "total $(( $(date +%s) - START ))s"
echo "=== summary"
cat "$SUMMARY"
