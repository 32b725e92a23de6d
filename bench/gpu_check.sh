#!/usr/bin/env bash
# The project's one prepared device script: on a machine with an NVIDIA GPU, build with the
# CUDA kernels, run the tests (CUDA ones included), compute-sanitizer (memcheck, racecheck)
# on bench/sanitize_cases.py, and the GPU benchmark sweep. Everything lands under $OUT as at
# most 7 files (the device tool brings back 8). Sized for one call of under 9 minutes on an
# H200; each step has its own time limit and a failed step does not stop the others.
#
#   OUT=/tmp/gpu bash bench/gpu_check.sh            # full
#   OUT=/tmp/gpu bash bench/gpu_check.sh --quick    # short benchmark, quick sanitizer cases
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
DETLOSS_PTXAS_VERBOSE=1 step build 420 \
  $PY -m pip install --no-build-isolation --no-deps -v -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; note "build failed: see build.log"; exit 1; }
$PY -m detloss_cuda info >> "$SUMMARY" 2>&1

# 2. tests: everything but the CMake rebuild (built and loaded in CI)
step tests 300 $PY -m pytest -q -x -p no:cacheprovider -k "not cmake" tests > "$OUT/tests.txt" 2>&1
tail -15 "$OUT/tests.txt"
grep -E "passed|failed|error" "$OUT/tests.txt" | tail -1 >> "$SUMMARY"

# 3. compute-sanitizer on small cases, every allocation separate
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
      /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SAN" ]; then
  for tool in memcheck racecheck; do
    cases="$QUICK"; [ $tool = racecheck ] && cases="--quick"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step "san-$tool" 150 \
      "$SAN" --tool $tool --error-exitcode 9 $PY bench/sanitize_cases.py $cases \
      >> "$OUT/sanitizer.txt" 2>&1
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|all cases ran" "$OUT/sanitizer.txt" | tail -2 >> "$SUMMARY"
  done
else
  note "compute-sanitizer: not found on this machine"
fi

# 4. the GPU benchmark
step bench 330 $PY -m detloss_cuda bench --devices cuda $QUICK --compile-dtypes fp32 \
  --json "$OUT/bench-cuda.json" --markdown "$OUT/bench-cuda.md" --plot "$OUT/bench-cuda.png" \
  > "$OUT/bench.txt" 2>&1
tail -n +1 "$OUT/bench.txt" | grep -v Warning | tail -60

note "total $(( $(date +%s) - START ))s"
echo "=== summary"
cat "$SUMMARY"
