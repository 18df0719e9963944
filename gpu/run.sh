#!/usr/bin/env bash
# fabric's GPU bundle (built by `./dev gpu-bundle`; see README.txt beside this
# script): the GPU tests, the `dp` example and the CUDA training benchmark
# (fabric, raw tch, Lightning Fabric), run against this machine's PyTorch
# (the torch of `python3`, 2.11), in under 8 minutes. Every step has its own
# time limit and log in LOGDIR; LOGDIR/summary.txt lists them.
#
#   ./run.sh LOGDIR              everything; where CUDA is unavailable, the
#                                CPU-side check instead, and exit status 3
#   ./run.sh --cpu-check LOGDIR  the CPU-side check only: every binary starts
#                                against torch's libraries and says clearly
#                                that CUDA is unavailable
#
# Exit status: 0 every step passed; 1 a step failed; 2 usage; 3 CUDA is
# unavailable (the binaries started and said so: the CPU-side check passed);
# 4 the bundle cannot run here (no torch 2.11, missing libraries, glibc or
# libstdc++ older than REQUIREMENTS).
#
# Environment: PYTHON (default python3); FABRIC_TORCH_LIB=DIR uses the
# libtorch in DIR instead of importing torch (CPU-side check only);
# FABRIC_BUNDLE_BUDGET_S (default 460) bounds the whole run.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MODE=gpu
if [ "${1:-}" = --cpu-check ]; then
  MODE=cpu
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--cpu-check] LOGDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
LOGDIR=$(cd "$1" && pwd)
PYTHON=${PYTHON:-python3}
BUDGET=${FABRIC_BUNDLE_BUDGET_S:-460}
START=$SECONDS
SUMMARY=$LOGDIR/summary.txt
FAILED=0
: > "$SUMMARY"

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }

# A command still running 10 s after its time is up gets SIGKILL, where
# timeout(1) can (GNU's can; BusyBox's has no -k).
KILL_AFTER=(-k 10)
timeout -k 1 5 true 2>/dev/null || KILL_AFTER=()

# record NAME STATUS SECONDS NOTE
record() {
  printf '%-22s %-5s %4ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"
  [ "$2" = FAIL ] && FAILED=1
  return 0
}

# step NAME LIMIT_S CMD...: runs CMD with its output in LOGDIR/NAME.log,
# killed (with its children) after LIMIT_S seconds or when the run's budget
# is spent. Returns CMD's status (124 or 137 when killed).
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 5))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "skipped: the run's ${BUDGET} s were spent" > "$LOGDIR/$name.log"
    return 124
  fi
  echo "--- $name (at most ${limit} s): $*" >&2
  timeout "${KILL_AFTER[@]}" "$limit" "$@" > "$LOGDIR/$name.log" 2>&1 < /dev/null
}

# check NAME LIMIT_S PATTERN CMD...: a step that passes when CMD exits with
# 0 and its log matches PATTERN (an extended regular expression).
check() {
  local name=$1 limit=$2 pattern=$3
  shift 3
  local t0=$SECONDS rc=0
  step "$name" "$limit" "$@" || rc=$?
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 124 ] && grep -q "^skipped: the run's" "$LOGDIR/$name.log"; then
    record "$name" FAIL 0 "not run: the run's ${BUDGET} s were spent"
  elif [ "$rc" -eq 0 ] && grep -Eq "$pattern" "$LOGDIR/$name.log"; then
    record "$name" PASS "$took" "$(grep -E "$pattern" "$LOGDIR/$name.log" | tail -1 | cut -c1-110)"
  else
    local why="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="timed out (exit $rc)"
    record "$name" FAIL "$took" "$why; last lines of $name.log:"
    tail -15 "$LOGDIR/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
  fi
}

# expect_refusal NAME PATTERN CMD...: the CPU-side check of one binary: it
# starts, fails, and its output says why (PATTERN: CUDA is unavailable).
expect_refusal() {
  local name=$1 pattern=$2
  shift 2
  local t0=$SECONDS rc=0
  step "$name" 60 "$@" || rc=$?
  local took=$((SECONDS - t0)) log=$LOGDIR/$name.log
  if grep -q "error while loading shared libraries\|symbol lookup error\|version .* not found" "$log"; then
    record "$name" FAIL "$took" "did not start: $(head -1 "$log" | cut -c1-150)"
  elif [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && grep -Eiq "$pattern" "$log"; then
    record "$name" OK "$took" "exit $rc: $(grep -Ei "$pattern" "$log" | head -1 | sed 's/^ *//' | cut -c1-200)"
  else
    record "$name" FAIL "$took" "exit $rc without the expected message; last lines of $name.log:"
    tail -15 "$log" | sed 's/^/    /' | tee -a "$SUMMARY"
  fi
}

say "fabric GPU bundle: $(cat "$HERE/BUILD_INFO" 2>/dev/null | tr '\n' ' ')"
say "started $(date -u '+%Y-%m-%d %H:%M:%S UTC') on ${HOSTNAME:-$(uname -n)}, mode $MODE, logs in $LOGDIR"

# --- the machine: torch, CUDA, NCCL, C and C++ libraries -----------------
command -v "$PYTHON" >/dev/null || { say "no $PYTHON on this machine"; exit 4; }
command -v timeout >/dev/null || { say "run.sh bounds every step with timeout(1), which is not installed"; exit 4; }
t0=$SECONDS
rc=0
step preflight 120 "$PYTHON" "$HERE/preflight.py" "$HERE" || rc=$?
# preflight.log holds KEY=VALUE lines (stdout) and the readable report.
grep -v '^[A-Z_]*=' "$LOGDIR/preflight.log" | sed 's/^/    /' | tee -a "$SUMMARY"
if [ "$rc" -ne 0 ]; then
  record preflight FAIL $((SECONDS - t0)) "exit $rc: the bundle cannot run on this machine (see above)"
  exit 4
fi
record preflight OK $((SECONDS - t0)) ""
fact() { grep "^$1=" "$LOGDIR/preflight.log" | tail -1 | cut -d= -f2-; }
TORCH_LIB=$(fact TORCH_LIB)
CUDA=$(fact CUDA)
GPUS=$(fact GPUS)
NCCL_LIB=$(fact NCCL_LIB)
MPIRUN=$(fact MPIRUN)

# --- the binaries' environment -------------------------------------------
# libtorch from this machine's torch (the binaries carry no rpath); cudarc
# loads NCCL as libnccl.so, which the nvidia-nccl wheel ships as libnccl.so.2
# only: a link in a private directory. Open MPI (libmpi, which fabric links,
# and its components) comes with the bundle: the NCCL test forms an MPI world
# of one process, without mpirun (a singleton, "isolated": no orted).
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/fabric-bundle.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
LIBPATH=$TORCH_LIB
if [ -n "$NCCL_LIB" ]; then
  ln -s "$NCCL_LIB" "$SCRATCH/libnccl.so"
  LIBPATH=$LIBPATH:$SCRATCH
fi
LIBPATH=$LIBPATH:$HERE/lib
export BUNDLE_LD_LIBRARY_PATH=$LIBPATH
export OMPI_MCA_mca_base_component_path=$HERE/lib/openmpi
export OPAL_PKGDATADIR=$HERE/share/openmpi
export OMPI_MCA_ess_singleton_isolated=1
export DIGITS_PATH=$HERE/data/digits.csv.gz
# NCCL's warnings (why it could not start, if it cannot) go to the logs.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# For the Rust binaries only: Python keeps the library path it had.
RUST=(env "LD_LIBRARY_PATH=$BUNDLE_LD_LIBRARY_PATH")

t0=$SECONDS
missing=""
{
  echo "LD_LIBRARY_PATH=$BUNDLE_LD_LIBRARY_PATH"
  for bin in "$HERE"/bin/*; do
    echo "== $bin"
    LD_LIBRARY_PATH=$BUNDLE_LD_LIBRARY_PATH ldd "$bin" 2>&1
  done
} > "$LOGDIR/libraries.log"
if command -v ldd >/dev/null; then
  missing=$(grep "not found" "$LOGDIR/libraries.log" | sort -u | tr -s ' \t' ' ')
  libtorch=$(grep -m1 "libtorch_cpu.so =>" "$LOGDIR/libraries.log" | awk '{print $3}')
  if [ -n "$missing" ]; then
    record libraries FAIL $((SECONDS - t0)) "missing:$missing (libraries.log)"
    exit 4
  fi
  record libraries OK $((SECONDS - t0)) "every library found; libtorch_cpu.so: $libtorch"
else
  record libraries SKIP 0 "no ldd on this machine"
fi

if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi > "$LOGDIR/nvidia-smi.log" 2>&1
fi

cpu_check() {
  local no_cuda='cuda.*(unavailable|not available|needs)|no cuda'
  expect_refusal cpu-gpu-tests "$no_cuda" \
    "${RUST[@]}" "$HERE/bin/gpu-tests" --ignored --exact cuda_trains_in_every_precision --nocapture
  expect_refusal cpu-dp-example "$no_cuda" "${RUST[@]}" "$HERE/bin/dp"
  expect_refusal cpu-bench-fabric "$no_cuda" \
    "${RUST[@]}" "$HERE/bin/training" --system fabric --model wide --accelerator cuda --precision bf16-mixed
  expect_refusal cpu-bench-raw "$no_cuda" \
    "${RUST[@]}" "$HERE/bin/training" --system raw --model wide --accelerator cuda --precision bf16-mixed
  # The NCCL test's child: an MPI world of one with the bundle's Open MPI
  # (MPI_Init as a singleton and an all-reduce), then NCCL, which cannot
  # start here.
  expect_refusal cpu-mpi-world 'NCCL.*(not installed|is installed as)|NCCL needs CUDA' \
    env FABRIC_GPU_CHILD=nccl "${RUST[@]:1}" "$HERE/bin/gpu-tests" --ignored --exact nccl_child --nocapture
  if [ "$CUDA" = 0 ]; then
    expect_refusal cpu-bench-lightning "$no_cuda" \
      "$PYTHON" "$HERE/bench/train_lightning.py" --system lightning --model wide --accelerator cuda
  else
    record cpu-bench-lightning SKIP 0 "torch not imported (FABRIC_TORCH_LIB): Lightning's side not checked"
  fi
}

if [ "$MODE" = cpu ] || [ "$CUDA" != 1 ]; then
  cpu_check
  if [ "$FAILED" = 1 ]; then
    say "CPU-side check FAILED (summary above, logs in $LOGDIR)"
    exit 1
  fi
  if [ "$CUDA" = 1 ]; then
    say "CPU-side check passed (this machine has CUDA: ./run.sh LOGDIR runs the GPU checks)"
    exit 0
  fi
  say "CUDA is unavailable here: the binaries start against $TORCH_LIB and say so; nothing ran on a GPU (exit 3)"
  exit 3
fi

# --- on the GPU -----------------------------------------------------------
tests=("${RUST[@]}" "$HERE/bin/gpu-tests" --ignored --test-threads=1 --nocapture --exact)
check gpu-precisions 120 "test result: ok. 1 passed" "${tests[@]}" cuda_trains_in_every_precision
check gpu-dp 120 "test result: ok. 1 passed" "${tests[@]}" dp_over_gpus_trains_as_one_gpu
check gpu-loading-clipping 120 "test result: ok. 1 passed" "${tests[@]}" pinned_worker_loading_and_grouped_clipping_on_cuda
check gpu-nccl 120 "test result: ok. 1 passed" "${tests[@]}" nccl_collectives_on_one_gpu
if [ "${GPUS:-0}" -lt 2 ]; then
  record gpu-ddp SKIP 0 "ddp over NCCL needs two GPUs; this machine has $GPUS"
elif [ -z "$MPIRUN" ]; then
  record gpu-ddp SKIP 0 "ddp over two GPUs needs Open MPI's mpirun, which is not installed here"
else
  # With the machine's Open MPI (its mpirun starts the ranks), not the bundle's.
  check gpu-ddp 150 "test result: ok. 1 passed" env -u OMPI_MCA_mca_base_component_path \
    -u OPAL_PKGDATADIR -u OMPI_MCA_ess_singleton_isolated \
    LD_LIBRARY_PATH="${BUNDLE_LD_LIBRARY_PATH%:$HERE/lib}" \
    "$HERE/bin/gpu-tests" --ignored --test-threads=1 --nocapture --exact ddp_over_two_gpus_averages_with_nccl
fi
check example-dp 120 "held-out accuracy: (9[0-9]|100)\." env EPOCHS=20 "${RUST[@]:1}" "$HERE/bin/dp"
check bench 300 "^\| Lightning Fabric \| [0-9]" \
  "$PYTHON" "$HERE/bench/gpu_training.py" --training "$HERE/bin/training" --out "$LOGDIR/bench.md"
[ -f "$LOGDIR/bench.md" ] && sed 's/^/    /' "$LOGDIR/bench.md" | tee -a "$SUMMARY"

say "finished in $((SECONDS - START)) s: $([ "$FAILED" = 0 ] && echo 'every step passed' || echo 'some steps FAILED')"
exit "$FAILED"
