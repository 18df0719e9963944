#!/usr/bin/env bash
# A crate of one's own, as a new user makes it: a fresh crate outside the
# workspace, whose files are taken from the README's "Using fabric in your
# own crate" section (the blocks after `<!-- own-crate: FILE -->`), with
# the registry dependency replaced by the path form the README gives. It is
# built with the libtorch of the checkout's set-up, and its binary is run
# without LD_LIBRARY_PATH.
#
#   .ci/own_crate.sh [DIR]   (default: a new temporary directory)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d /tmp/own-crate.XXXXXX)}
mkdir -p "$dir"

python3 - "$root/README.md" "$dir" "$root/fabric" <<'PY'
import os, re, sys
readme, out, fabric_dir = sys.argv[1:]
text = open(readme).read()
section = text.split("## Using fabric in your own crate", 1)[1].split("\n## ", 1)[0]
blocks = re.findall(r"<!-- own-crate: (\S+) -->\n```[^\n]*\n(.*?)```", section, re.S)
names = [name for name, _ in blocks]
for needed in ["Cargo.toml", "build.rs", "src/main.rs", "commands"]:
    if needed not in names:
        sys.exit(f"README: no `<!-- own-crate: {needed} -->` block in 'Using fabric in your own crate'")
path_form = f'tch-fabric = {{ path = "{fabric_dir}" }}'
if "tch-fabric = { path = " not in section:
    sys.exit("README: the section no longer shows the path form of the dependency")
for name, body in blocks:
    if name == "Cargo.toml":
        if 'tch-fabric = "0.1"' not in body:
            sys.exit("README: the Cargo.toml block has no `tch-fabric = \"0.1\"` line")
        body = body.replace('tch-fabric = "0.1"', path_form)
        body += "\n[workspace]\n"  # its own workspace, whatever encloses DIR
    target = os.path.join(out, "commands.sh" if name == "commands" else name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        f.write(body)
print(f"own crate in {out}: {', '.join(names)}")
PY

# The libtorch the checkout's set-up installed, unless one is given
# (the README's "Build against libtorch as above").
if [ -z "${LIBTORCH:-}" ] && [ -z "${LIBTORCH_USE_PYTORCH:-}" ]; then
  export LIBTORCH="$root/.venv/libtorch"
fi
cd "$dir"
# Compiled dependencies come from the checkout's target directory, which
# the crate's `target` points at (the crate's files and commands are the
# README's; this only saves rebuilding libtorch's bindings).
if [ ! -e target ]; then
  mkdir -p "${CARGO_TARGET_DIR:-$root/target}"
  ln -s "${CARGO_TARGET_DIR:-$root/target}" target
fi
unset CARGO_TARGET_DIR
# The commands block, as written, without LD_LIBRARY_PATH.
env -u LD_LIBRARY_PATH bash -euo pipefail commands.sh
echo "own crate: built and ran"
