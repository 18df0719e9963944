"""The CUDA training comparison: fabric, the raw tch loop and Lightning Fabric
on one GPU, the same work in each (the `wide` MLP 4096-8192-8192-8192-1000,
batch 1024, cross-entropy, SGD lr 0.01, one batch held on the GPU; see
BENCHMARKS.md, "Method"), in `bf16-mixed` by default.

  python3 bench/gpu_training.py --training PATH/TO/training [--out report.md]

`--training` is the built `benches/training.rs` (gpu/run.sh passes the
bundle's); Lightning runs `bench/train_lightning.py` beside this file with
this Python. The systems run one after the other, `--rounds` times over, each
in its own process; the figure is the median of every repeat of every round.
Rust processes get the library path in BUNDLE_LD_LIBRARY_PATH (set by
gpu/run.sh) as their LD_LIBRARY_PATH; Python keeps its own. Exits with 1 if
a system failed (its output is printed).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = {"tiny": 32, "medium": 64, "wide": 1024}


def fields(line):
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def command(system, a):
    common = [
        "--model", a.model, "--precision", a.precision, "--accelerator", a.accelerator,
        "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--steps", str(a.steps),
    ]
    if system == "lightning":
        return [sys.executable, os.path.join(HERE, "train_lightning.py"), "--system", "lightning", *common], None
    env = dict(os.environ)
    if "BUNDLE_LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["BUNDLE_LD_LIBRARY_PATH"]
    return [a.training, "--system", system, *common], env


def run(system, a, results, failures):
    cmd, env = command(system, a)
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
        text, code = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        text, code = text + f"\n(killed after {a.timeout} s)", "timeout"
    took = time.monotonic() - start
    print(f"-- {system}: exit {code} in {took:.1f} s: {' '.join(cmd)}", flush=True)
    print(text.rstrip(), flush=True)
    record = results.setdefault(system, {"times": [], "used_mb": [], "reserved_mb": [], "rss_kb": []})
    found = False
    for line in text.splitlines():
        if line.startswith("RESULT "):
            record["times"] += [float(t) for t in fields(line)["all"].split(",")]
            found = True
        elif line.startswith("CUDA "):
            f = fields(line)
            record["used_mb"].append(float(f["used_mb"]))
            if "peak_reserved_mb" in f:
                record["reserved_mb"].append(float(f["peak_reserved_mb"]))
        elif line.startswith("RSS "):
            record["rss_kb"].append(int(fields(line)["kb"]))
    if code != 0 or not found:
        failures.append(f"{system} (exit {code}):\n{text[-3000:]}")


def table(results, a):
    batch = BATCH[a.model]
    rows = [
        f"{a.accelerator.upper()} training step: MLP {a.model} ({'-'.join(map(str, MODEL_SIZES[a.model]))}), batch {batch}, "
        f"{a.precision}, SGD, {'1 GPU' if a.accelerator == 'cuda' else 'CPU'}; median of {a.rounds} rounds x {a.repeats} repeats x {a.steps} steps",
        "",
        "| system | ms/step | samples/s | fabric / system (throughput) | device memory in use (MiB) | peak reserved by the allocator (MiB) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    medians = {s: statistics.median(r["times"]) for s, r in results.items() if r["times"]}
    for system in ["fabric", "raw", "lightning"]:
        r = results.get(system)
        if system not in medians:
            rows.append(f"| {LABEL[system]} | failed | | | | | |")
            continue
        ms = medians[system]
        ratio = f"{ms / medians['fabric']:.2f}x" if "fabric" in medians else ""
        used = f"{max(r['used_mb']):.0f}" if r["used_mb"] else "n/a"
        reserved = f"{max(r['reserved_mb']):.0f}" if r["reserved_mb"] else "n/a (PyTorch only)"
        rss = f"{max(r['rss_kb']) / 1024:.0f}" if r["rss_kb"] else "n/a"
        rows.append(f"| {LABEL[system]} | {ms:.3f} | {batch / ms * 1000:,.0f} | {ratio} | {used} | {reserved} | {rss} |")
    rows += [
        "",
        "Device memory in use: total minus free (cudaMemGetInfo, torch.cuda.mem_get_info) at the end of the "
        "run: the CUDA context plus what libtorch's caching allocator keeps after its peak. "
        "fabric / system above 1x: fabric is faster.",
    ]
    return "\n".join(rows)


MODEL_SIZES = {"tiny": [32, 64, 10], "medium": [784, 1024, 1024, 10], "wide": [4096, 8192, 8192, 8192, 1000]}
LABEL = {"fabric": "fabric", "raw": "raw tch", "lightning": "Lightning Fabric"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--training", required=True, help="the built benches/training.rs")
    p.add_argument("--model", default="wide", choices=list(BATCH))
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--accelerator", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of this script")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--timeout", type=int, default=120, help="seconds per process")
    p.add_argument("--out", help="also write the table to this file")
    a = p.parse_args()
    results, failures = {}, []
    for round_ in range(a.rounds):
        print(f"== round {round_ + 1} of {a.rounds}", flush=True)
        for system in ["fabric", "raw", "lightning"]:
            run(system, a, results, failures)
    text = table(results, a)
    print("\n" + text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    if failures:
        print("\nFAILED:\n" + "\n\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
