#!/usr/bin/env bash
# fabric without its `mpi` feature: nothing of MPI in the dependency tree,
# and the build, clippy and the single-process tests pass on a machine
# without Open MPI's headers, `mpicc` or libclang. Where a private mount
# namespace can be made (`unshare`, root), they are hidden from the build by
# mounting empty directories and files over them; elsewhere the build runs
# as it is and says so.
#
#   .ci/without_mpi.sh            hide Open MPI and libclang if possible, then check
#   .ci/without_mpi.sh --inside   the checks themselves (what runs hidden)
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

# The root package's integration tests that run in one process.
SINGLE_PROCESS_TESTS=(training precision checkpoint optim data loggers callbacks config runtime determinism dp progress startup)

checks() {
  echo "==> cargo tree: nothing of MPI without the feature"
  local tree
  tree=$(cargo tree -p tch-fabric --no-default-features -e normal,build --prefix none)
  if grep -iE '^(mpi|mpi-sys|mpi-derive|bindgen|clang-sys) ' <<<"$tree"; then
    echo "MPI (or its bindings' generator) is still in the dependency tree" >&2
    exit 1
  fi
  echo "==> cargo clippy -p tch-fabric --no-default-features -D warnings"
  cargo clippy -p tch-fabric --no-default-features --features testing --all-targets -- -D warnings
  echo "==> cargo test: fabric's unit tests, and the single-process integration tests, without MPI"
  cargo test -p tch-fabric --no-default-features --features testing --lib
  local tests=()
  for t in "${SINGLE_PROCESS_TESTS[@]}"; do tests+=(--test "$t"); done
  cargo test -p fabric-examples --no-default-features "${tests[@]}"
}

hidden() {
  # What the `mpi` crate's build needs: mpicc (and the other wrappers),
  # Open MPI's headers and pkg-config files, and libclang for bindgen.
  local empty_dir empty_file
  empty_dir=$(mktemp -d)
  empty_file=$(mktemp)
  local hidden=()
  for p in /usr/bin/mpicc /usr/bin/mpicxx /usr/bin/mpic++ /usr/bin/mpiCC /usr/bin/opal_wrapper \
           /usr/lib/x86_64-linux-gnu/pkgconfig/ompi.pc /usr/lib/x86_64-linux-gnu/pkgconfig/ompi-c.pc \
           /usr/lib/x86_64-linux-gnu/pkgconfig/mpi.pc /usr/lib/x86_64-linux-gnu/pkgconfig/mpi-c.pc \
           /usr/lib/x86_64-linux-gnu/libclang*.so* /usr/lib/llvm-*/lib/libclang*.so*; do
    [ -e "$p" ] || continue
    mount --bind "$empty_file" "$p"
    hidden+=("$p")
  done
  for d in /usr/lib/x86_64-linux-gnu/openmpi/include /usr/include/x86_64-linux-gnu/openmpi; do
    [ -d "$d" ] || continue
    mount --bind "$empty_dir" "$d"
    hidden+=("$d")
  done
  echo "hidden (empty in this mount namespace): ${hidden[*]:-nothing was installed}"
  if mpicc --version >/dev/null 2>&1; then
    echo "mpicc still runs: hiding failed" >&2
    exit 1
  fi
}

case "${1:-}" in
  --inside)
    # Only inside the private mount namespace made below: run directly,
    # the mounts would hide Open MPI from the whole machine.
    if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
      echo "--inside runs only in the private mount namespace that $0 makes" >&2
      exit 2
    fi
    hidden
    checks
    ;;
  "")
    if [ "$(id -u)" = 0 ] && unshare --mount --fork true 2>/dev/null; then
      exec unshare --mount --fork "$self" --inside
    fi
    echo "no private mount namespace here: checking without hiding Open MPI and libclang"
    checks
    ;;
  *)
    echo "usage: $0" >&2
    exit 2
    ;;
esac
