"""What gpu/run.sh needs to know about the machine, found with its python3.

Prints `KEY=VALUE` lines on stdout (read by run.sh) and a readable report on
stderr; exits with 4 when the bundle cannot run here (no torch 2.11, a glibc or
libstdc++ older than the binaries need).

  python3 preflight.py BUNDLE_DIR

FABRIC_TORCH_LIB=/path/to/torch/lib skips importing torch (the CPU-side check
on a machine whose torch cannot be imported, as the build machine's, whose
torch wheel lacks the CUDA libraries that `import torch` loads).
"""
import glob
import os
import platform
import re
import shutil
import sys

BUILT_FOR = "2.11"


def report(line):
    print(line, file=sys.stderr)


def emit(key, value):
    print(f"{key}={value}")


def version(text):
    return tuple(int(p) for p in text.split("."))


def requirements(bundle):
    """The highest symbol versions the bundled binaries need (written by
    gpu/bundle.sh): {"GLIBC": "2.34", "GLIBCXX": "3.4.30", "CXXABI": ...}."""
    needs = {}
    with open(os.path.join(bundle, "REQUIREMENTS")) as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key:
                needs[key] = value
    return needs


def torch_facts():
    """(torch lib dir, torch version, CUDA usable, GPU count), from
    FABRIC_TORCH_LIB or by importing torch."""
    given = os.environ.get("FABRIC_TORCH_LIB")
    if given:
        report(f"torch: libraries from FABRIC_TORCH_LIB={given} (torch not imported)")
        return given, "unknown", None, 0
    try:
        import torch
    except Exception as e:  # any import failure is the same answer
        report(f"python3 ({sys.executable}) cannot import torch: {e}")
        sys.exit(4)
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    report(f"torch {torch.__version__} (CUDA {torch.version.cuda}) at {lib}")
    if not torch.__version__.startswith(BUILT_FOR + "."):
        # libtorch's C++ symbols change between minor versions: the
        # binaries would not start.
        report(f"the bundle was built against torch {BUILT_FOR}.x; this python3 has torch {torch.__version__}")
        sys.exit(4)
    if cuda:
        for i in range(gpus):
            p = torch.cuda.get_device_properties(i)
            report(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    else:
        report("CUDA is unavailable to torch on this machine (torch.cuda.is_available() is False)")
    return lib, torch.__version__, cuda, gpus


def loaded_libraries():
    """The shared objects loaded in this process (torch's, once imported)."""
    try:
        with open("/proc/self/maps") as f:
            paths = (line.split()[-1] for line in f if "/" in line)
            return sorted({p for p in paths if ".so" in os.path.basename(p)})
    except OSError:
        return []


def nccl_library(torch_lib):
    """The NCCL torch loaded (where torch was imported), else the
    nvidia-nccl wheel's beside torch, else any libnccl.so.2 in the site
    directories."""
    candidates = [p for p in loaded_libraries() if os.path.basename(p).startswith("libnccl.so")]
    site = os.path.dirname(os.path.dirname(torch_lib))
    candidates += [os.path.join(site, "nvidia", "nccl", "lib", "libnccl.so.2")]
    candidates += sorted(glob.glob(os.path.join(site, "nvidia", "**", "libnccl.so.2"), recursive=True))
    for path in candidates:
        if os.path.exists(path):
            return os.path.realpath(path)
    return ""


def libstdcxx_in_use():
    """The libstdc++ this process loaded (torch's C++ runtime), else the one
    the dynamic loader finds."""
    for path in loaded_libraries():
        if os.path.basename(path).startswith("libstdc++.so"):
            return path
    for d in ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/usr/lib"]:
        path = os.path.join(d, "libstdc++.so.6")
        if os.path.exists(path):
            return path
    return ""


def provides(library, symbol_version):
    try:
        with open(library, "rb") as f:
            return symbol_version.encode() + b"\0" in f.read()
    except OSError:
        return False


def main():
    bundle = sys.argv[1]
    needs = requirements(bundle)
    lib, torch_version, cuda, gpus = torch_facts()
    if not os.path.exists(os.path.join(lib, "libtorch_cpu.so")):
        report(f"no libtorch_cpu.so in {lib}")
        sys.exit(4)
    emit("TORCH_LIB", lib)
    emit("TORCH_VERSION", torch_version)
    emit("CUDA", {None: "unknown", True: "1", False: "0"}[cuda])
    emit("GPUS", gpus)

    ok = True
    libc = os.confstr("CS_GNU_LIBC_VERSION") or "unknown"
    report(f"{platform.platform()}, {libc}, Python {platform.python_version()}")
    have = re.search(r"([0-9]+\.[0-9]+)", libc)
    if have and version(have.group(1)) < version(needs["GLIBC"]):
        report(f"the bundle's binaries need glibc {needs['GLIBC']} or later; this machine has {libc}")
        ok = False

    stdcxx = libstdcxx_in_use()
    wanted = [f"GLIBCXX_{needs['GLIBCXX']}", f"CXXABI_{needs['CXXABI']}"]
    if stdcxx and all(provides(stdcxx, w) for w in wanted):
        report(f"libstdc++: {stdcxx} provides {', '.join(wanted)}")
    else:
        report(f"the bundle's binaries need a libstdc++ with {' and '.join(wanted)}; {stdcxx or 'none found'} lacks them")
        ok = False

    nccl = nccl_library(lib)
    report(f"NCCL: {nccl or 'not found beside torch'}")
    emit("NCCL_LIB", nccl)
    mpirun = shutil.which("mpirun") or ""
    report(f"mpirun: {mpirun or 'not installed (the ddp test over two GPUs needs it)'}")
    emit("MPIRUN", mpirun)
    if not ok:
        sys.exit(4)


if __name__ == "__main__":
    main()
