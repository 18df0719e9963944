"""fabric against Lightning Fabric and raw tch, side by side: runs every
comparison of BENCHMARKS.md in one go and prints the tables in markdown.

    ./dev bench            # full run (release build; about 5 minutes)
    ./dev bench --short    # CI smoke run (debug build, few steps; numbers not representative)

or, once `./dev setup` has installed Lightning into .venv:

    .venv/bin/python bench/suite.py [--short] [--rounds N] [--threads T] [--only NAME ...]

Each training comparison runs the same model, batch, optimizer (SGD), step
count and thread settings in every system: each system runs in its own
process (warm-up, then several timed repeats), the processes of one
comparison run back to back, and `--rounds` interleaves them again so that
a burst of load elsewhere on the machine hits every system alike. The
figure reported is the median over every repeat of every round. Peak
resident memory is each process's own `getrusage` maximum (the largest rank
for ddp).

The tables also go to target/bench/report.md.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FAILURES = []


def log(message):
    print(f"  {message}", file=sys.stderr, flush=True)


def uptime_load():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run(command, timeout=900, env=None, what=None):
    """Runs a command; returns its stdout, or None (recorded) when it fails."""
    what = what or " ".join(map(str, command))
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        done = subprocess.run(
            [str(c) for c in command], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        FAILURES.append(f"{what}: timed out after {timeout} s")
        log(f"FAILED (timeout): {what}")
        return None
    if done.returncode != 0:
        FAILURES.append(f"{what}: exit status {done.returncode}\n{done.stderr[-3000:]}")
        log(f"FAILED (exit {done.returncode}): {what}\n{done.stderr[-3000:]}")
        return None
    return done.stdout


def fields(line):
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


def build(profile):
    """Builds the benchmark programs; returns {name: executable}."""
    log(f"building the benchmarks (cargo, profile {profile})")
    out = run(
        ["cargo", "build", "--benches", "--profile", profile, "--message-format=json-render-diagnostics"],
        timeout=3600,
        what="cargo build --benches",
    )
    if out is None:
        sys.exit("the benchmarks did not build")
    exes = {}
    for line in out.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") == "compiler-artifact" and message.get("executable"):
            if "bench" in message["target"]["kind"]:
                exes[message["target"]["name"]] = message["executable"]
    return exes


# ---- training ----------------------------------------------------------------

MODELS = {
    "tiny": ("MLP 32-64-10", 32),
    "medium": ("MLP 784-1024-1024-10", 64),
    "large": ("MLP 1024-2048-2048-2048-10", 64),
}


def workloads(short):
    """(name, model, precision, processes, steps per repeat)."""
    scale = 5 if short else 1
    return [
        ("tiny", "tiny", "32-true", 1, 500 // scale),
        ("medium-32", "medium", "32-true", 1, 50 // scale),
        ("medium-bf16-mixed", "medium", "bf16-mixed", 1, 30 // scale),
        ("medium-bf16-true", "medium", "bf16-true", 1, 50 // scale),
        ("medium-ddp", "medium", "32-true", 2, 30 // scale),
        # 10.5M parameters: the averaging is not negligible, and overlapping
        # it with the backward pass shows (fabric against fabric-nooverlap).
        ("large-ddp", "large", "32-true", 2, 10 // scale),
    ]


def training_command(system, exes, model, precision, devices, steps, args):
    threads = args.threads if devices == 1 else max(1, args.threads // devices)
    common = [
        "--model", model, "--precision", precision, "--devices", devices,
        "--warmup", args.warmup, "--repeats", args.repeats, "--steps", steps, "--threads", threads,
    ]
    if system == "fabric-nosync":
        return [exes["training"], "--system", "fabric", "--no-sync", *common]
    if system == "fabric-nooverlap":
        return [exes["training"], "--system", "fabric", "--overlap", "off", *common]
    if system in ("fabric", "raw"):
        return [exes["training"], "--system", system, *common]
    return [PYTHON, "bench/train_lightning.py", "--system", system, *common]


def systems_for(precision, devices):
    systems = ["fabric", "lightning"]
    if devices == 1:
        systems.append("raw")
        if precision == "32-true":
            systems.append("torch")
    else:
        # Diagnostic: fabric's ddp without the gradient averaging (each rank
        # trains alone), the floor the averaging adds to; and the averaging
        # after the backward pass instead of overlapped with it.
        systems.extend(["fabric-nosync", "fabric-nooverlap"])
    return systems


def run_training(exes, args):
    results = {}  # (workload, system) -> {"times": [...], "rss": [...]}
    selected = [w for w in workloads(args.short) if wanted(args, w[0])]
    for round_ in range(args.rounds):
        for name, model, precision, devices, steps in selected:
            for system in systems_for(precision, devices):
                command = training_command(system, exes, model, precision, devices, steps, args)
                log(f"round {round_ + 1}/{args.rounds}: {name}, {system}")
                out = run(command, what=f"{name} ({system})")
                if out is None:
                    continue
                entry = results.setdefault((name, system), {"times": [], "cpu": [], "rss": [], "threads": None})
                ranks = []
                for line in out.splitlines():
                    if line.startswith("RESULT "):
                        f = fields(line)
                        entry["times"].extend(float(t) for t in f["all"].split(","))
                        entry["cpu"].extend(float(t) for t in f.get("cpu", "").split(",") if t)
                        entry["threads"] = f.get("threads")
                    elif line.startswith("RSS "):
                        ranks.append(int(fields(line)["kb"]))
                if ranks:
                    entry["rss"].append(max(ranks))
                if not entry["times"]:
                    FAILURES.append(f"{name} ({system}): no RESULT line in\n{out[-2000:]}")
    return results


def wanted(args, part):
    """Whether `--only` selects `part` (a training workload or a section)."""
    if not args.only:
        return True
    if part in args.only:
        return True
    return "training" in args.only and part in {w[0] for w in workloads(False)}


def fmt_ms(ms):
    return f"{ms:.3f} ms" if ms < 1 else f"{ms:.2f} ms"


def training_table(results, args):
    lines = [
        "| workload | fabric | Lightning Fabric | raw tch | plain PyTorch | fabric / Lightning (throughput) | fabric / raw tch (throughput) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    targets = {
        "tiny": ("lightning", 1.8),
        "medium-32": ("lightning", 1.0),
        "medium-ddp": ("lightning", 1.5),
    }
    notes = []
    cpu = [
        "| workload | fabric | Lightning Fabric | raw tch | plain PyTorch | fabric / Lightning (throughput) | fabric / raw tch (throughput) |",
        "|---|---|---|---|---|---|---|",
    ]
    memory = [
        "| workload | fabric | Lightning Fabric | raw tch | plain PyTorch | fabric / Lightning (memory) |",
        "|---|---|---|---|---|---|",
    ]
    for name, model, precision, devices, steps in workloads(args.short):
        if not wanted(args, name):
            continue
        label, batch = MODELS[model]
        procs = "1 process" if devices == 1 else f"{devices} processes ddp"
        title = f"{label}, batch {batch}, {precision}, {procs}"
        median = {}
        cpu_median = {}
        rss = {}
        for system in ("fabric", "lightning", "raw", "torch", "fabric-nosync", "fabric-nooverlap"):
            entry = results.get((name, system))
            if entry and entry["times"]:
                median[system] = statistics.median(entry["times"])
                if entry["cpu"]:
                    cpu_median[system] = statistics.median(entry["cpu"])
                rss[system] = max(entry["rss"]) / 1024 if entry["rss"] else None

        def cell(system):
            if system not in median:
                return "n/a" if system not in systems_for(precision, devices) else "failed"
            ms = median[system]
            samples = batch * devices / (ms / 1000)
            return f"{fmt_ms(ms)} ({samples / 1000:.0f}k samples/s)" if samples >= 10000 else f"{fmt_ms(ms)} ({samples:.0f} samples/s)"

        def ratio(other):
            if "fabric" in median and other in median:
                return f"{median[other] / median['fabric']:.2f}x"
            return "n/a"

        target = ""
        if name in targets:
            _, goal = targets[name]
            if "fabric" in median and "lightning" in median:
                got = median["lightning"] / median["fabric"]
                target = f">= {goal:g}x Lightning: {'met' if got >= goal else 'MISSED'}"
        if name == "medium-32" and "fabric" in median and "raw" in median:
            got = median["raw"] / median["fabric"]
            target += f"; >= 0.98x raw: {'met' if got >= 0.98 else 'MISSED'}"
        if args.short and target:
            target = "(not judged in the short mode)"
        lines.append(
            f"| {title} | {cell('fabric')} | {cell('lightning')} | {cell('raw')} | {cell('torch')} "
            f"| {ratio('lightning')} | {ratio('raw')} | {target} |"
        )

        def cpu_cell(system):
            return fmt_ms(cpu_median[system]) if system in cpu_median else "n/a"

        def cpu_ratio(other):
            if "fabric" in cpu_median and other in cpu_median:
                return f"{cpu_median[other] / cpu_median['fabric']:.2f}x"
            return "n/a"

        if devices == 1:
            cpu.append(
                f"| {title} | {cpu_cell('fabric')} | {cpu_cell('lightning')} | {cpu_cell('raw')} | {cpu_cell('torch')} "
                f"| {cpu_ratio('lightning')} | {cpu_ratio('raw')} |"
            )

        def mb(system):
            if rss.get(system) is None:
                return "n/a"
            return f"{rss[system]:.0f} MB"

        mem_ratio = "n/a"
        if rss.get("fabric") and rss.get("lightning"):
            mem_ratio = f"{rss['fabric'] / rss['lightning']:.2f}x"
        memory.append(f"| {title} | {mb('fabric')} | {mb('lightning')} | {mb('raw')} | {mb('torch')} | {mem_ratio} |")
        if "fabric-nosync" in median:
            floor = median["fabric-nosync"]
            notes.append(
                f"{title}: fabric without the gradient averaging (each rank trains alone): {fmt_ms(floor)} per step; "
                f"the averaging adds {median['fabric'] - floor:.2f} ms" if "fabric" in median else ""
            )
        if "fabric-nooverlap" in median and "fabric" in median:
            after = median["fabric-nooverlap"]
            notes.append(
                f"{title}: the averaging after the backward pass instead of overlapped with it "
                f"(`DdpStrategy::overlap(false)`): {fmt_ms(after)} per step, overlapped {fmt_ms(median['fabric'])} "
                f"({after / median['fabric']:.2f}x)"
            )
    if notes:
        lines += [""] + [f"- {n}" for n in notes if n]
    return lines, cpu, memory


# ---- the character GPT ---------------------------------------------------------


def gpt_runs(short, threads):
    """(name, precision, processes, width, threads per process, warm-up, steps)."""
    if short:
        return [("192-32", "32-true", 1, 64, threads, 1, 2)]
    runs = []
    for width, warmup, steps in ((192, 3, 20), (384, 2, 8), (768, 1, 4)):
        for precision in ("32-true", "bf16-mixed"):
            runs.append((f"{width}-{precision}", precision, 1, width, threads, warmup, steps))
    # ddp's scaling: 2 ranks of 1 thread against 1 process of 1 thread.
    runs.append(("192-32-true-1-thread", "32-true", 1, 192, 1, 3, 20))
    runs.append(("192-32-true-ddp", "32-true", 2, 192, 1, 3, 20))
    return runs


def gpt_flops_per_token(width, layers=6, block=128, vocab=73):
    """Config::flops_per_token of src/gpt.rs: 6 N + 12 L T d."""
    d = width
    per_block = 4 * d + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d
    n = vocab * d + layers * per_block + 2 * d
    return 6 * n + 12 * layers * block * d


def run_gpt(exes, args):
    short = args.short
    shape = ["--layers", 2, "--block", 32] if short else []
    peaks = {}
    for threads in sorted({args.gpt_threads, 1} if not short else {args.gpt_threads}):
        out = run([PYTHON, "bench/gpt_lightning.py", "--peak", "--threads", threads], what="matmul peak")
        for line in (out or "").splitlines():
            if line.startswith("PEAK "):
                f = fields(line)
                peaks[(f["kind"], threads)] = float(f["gflops"])
    results = {}
    skipped = {}
    for name, precision, devices, width, threads, warmup, steps in gpt_runs(short, args.gpt_threads):
        # Bound each run to about 30 s from the measured peak (at an assumed
        # 30% of it): on a CPU without bfloat16 instructions a bf16-mixed
        # step of the wide models would take minutes.
        kind = "bfloat16" if precision == "bf16-mixed" else "float32"
        peak = peaks.get((kind, threads))
        if not short and peak:
            flops = gpt_flops_per_token(width) * 16 * 128
            seconds = flops / (0.3 * peak * 1e9)
            if seconds * 3 > 30 and width > 192:
                skipped[name] = (
                    f"skipped: its {kind} matmul peak of {peak:.1f} GFLOP/s gives about {seconds:.0f} s per step"
                )
                continue
            steps = max(2, min(steps, int(30 / seconds)))
            warmup = min(warmup, max(1, int(5 / seconds)))
        for system in ("fabric", "lightning"):
            common = [
                "--precision", precision, "--devices", devices, "--width", width, "--threads", threads,
                "--warmup", warmup, "--steps", steps, *shape,
            ]
            command = [exes["gpt"], *common] if system == "fabric" else [PYTHON, "bench/gpt_lightning.py", *common]
            log(f"gpt: {name}, {system}")
            out = run(command, what=f"gpt {name} ({system})")
            if out is None:
                continue
            entry = {"rss": []}
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    entry.update({k: float(v) for k, v in fields(line).items() if k != "system"})
                elif line.startswith("RSS "):
                    entry["rss"].append(int(fields(line)["kb"]))
            if "tokens_per_s" not in entry:
                FAILURES.append(f"gpt {name} ({system}): no RESULT line in\n{out[-2000:]}")
                continue
            results[(name, system)] = entry

    def get(name, system, key):
        return results.get((name, system), {}).get(key)

    lines = [
        "Matrix-multiply peak (square products up to 2048 x 2048): "
        + ", ".join(f"{k} {t} thread{'s' if t > 1 else ''}: {v:.1f} GFLOP/s" for (k, t), v in sorted(peaks.items())),
        "",
        "| run | fabric tokens/s | Lightning tokens/s | fabric / Lightning | fabric forward / backward / clip / optimizer (ms) | Lightning forward / backward / clip / optimizer (ms) | MFU fabric | MFU Lightning | peak RSS fabric / Lightning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, precision, devices, width, threads, _, _ in gpt_runs(short, args.gpt_threads):
        kind = "bfloat16" if precision == "bf16-mixed" else "float32"
        peak = peaks.get((kind, threads))
        flops = gpt_flops_per_token(width, 2 if short else 6, 32 if short else 128)

        def cell(system):
            t = get(name, system, "tokens_per_s")
            return f"{t:,.0f}" if t else skipped.get(name, "failed")

        def phases(system):
            if (name, system) not in results:
                return "failed"
            return " / ".join(f"{get(name, system, p + '_ms'):.1f}" for p in ("forward", "backward", "clip", "optimizer"))

        def mfu(system):
            t = get(name, system, "tokens_per_s")
            if not t or not peak:
                return "n/a"
            return f"{t * flops / (peak * 1e9 * devices) * 100:.1f}%"

        def rss(system):
            r = results.get((name, system), {}).get("rss")
            return f"{max(r) / 1024:.0f} MB" if r else "n/a"

        a, b = get(name, "fabric", "tokens_per_s"), get(name, "lightning", "tokens_per_s")
        ratio = f"{a / b:.2f}x" if a and b else "n/a"
        procs = f"{devices} ranks ddp" if devices > 1 else "1 process"
        label = f"width {width}, {precision}, {procs}, {threads} thread{'s' if threads > 1 else ''}{' per rank' if devices > 1 else ''}"
        lines.append(
            f"| {label} | {cell('fabric')} | {cell('lightning')} | {ratio} | {phases('fabric')} | {phases('lightning')} "
            f"| {mfu('fabric')} | {mfu('lightning')} | {rss('fabric')} / {rss('lightning')} |"
        )
    if not short:
        lines += [
            "",
            "| width | fabric bf16-mixed / 32-true | Lightning bf16-mixed / 32-true | fabric loss after the timed steps, 32-true / bf16-mixed | target (fabric) |",
            "|---|---|---|---|---|",
        ]
        goals = {192: 1.0, 384: 1.5, 768: 2.0}
        for width, goal in goals.items():
            def speedup(system):
                b16 = get(f"{width}-bf16-mixed", system, "tokens_per_s")
                f32 = get(f"{width}-32-true", system, "tokens_per_s")
                return (b16 / f32) if b16 and f32 else None

            fs, ls = speedup("fabric"), speedup("lightning")
            l32, l16 = get(f"{width}-32-true", "fabric", "loss_last"), get(f"{width}-bf16-mixed", "fabric", "loss_last")
            losses = f"{l32:.4f} / {l16:.4f}" if l32 and l16 else "n/a"
            verdict = "not measured" if fs is None else ("met" if fs >= goal else "MISSED")
            lines.append(
                f"| {width} | {f'{fs:.2f}x' if fs else 'n/a'} | {f'{ls:.2f}x' if ls else 'n/a'} | {losses} | >= {goal:g}x: {verdict} |"
            )
        one = {s: get("192-32-true-1-thread", s, "tokens_per_s") for s in ("fabric", "lightning")}
        two = {s: get("192-32-true-ddp", s, "tokens_per_s") for s in ("fabric", "lightning")}
        eff = {s: two[s] / (2 * one[s]) if one[s] and two[s] else None for s in one}
        lines += [
            "",
            "ddp scaling efficiency (2-rank tokens/s over twice 1 process's, 1 thread each, width 192, 32-true): "
            + ", ".join(f"{s} {e:.2f}" if e else f"{s} n/a" for s, e in eff.items())
            + (f" (target >= 0.95 for fabric: {'met' if eff['fabric'] and eff['fabric'] >= 0.95 else 'MISSED'})"),
        ]
        judged = [(n, get(n, "fabric", "tokens_per_s"), get(n, "lightning", "tokens_per_s")) for n, *_ in gpt_runs(False, args.gpt_threads)]
        behind = [n for n, a, b in judged if a and b and a < b]
        lines.append(
            "Target, fabric's tokens/s at least Lightning's in every run: "
            + ("met" if not behind else "MISSED in " + ", ".join(behind))
        )
    return lines


# ---- hooks, all-reduce, compile time --------------------------------------


def run_hooks(exes, args):
    calls = 20_000 if args.short else 200_000
    py_calls = 2_000 if args.short else 20_000
    repeats = 3 if args.short else 5
    ours = run([exes["hooks"], "--calls", calls, "--repeats", repeats], what="hooks (fabric)")
    theirs = run(
        [PYTHON, "bench/call_lightning.py", "--calls", py_calls, "--repeats", repeats], what="hooks (Lightning)"
    )
    parsed = {}
    for system, out in (("fabric", ours), ("lightning", theirs)):
        for line in (out or "").splitlines():
            if line.startswith("RESULT "):
                f = fields(line)
                parsed[(system, int(f["callbacks"]))] = float(f["us_per_call"])
    lines = [
        "| callbacks registered | fabric `call::<OnTrainEpochEnd>` | Lightning `call(\"on_train_epoch_end\")` | fabric / Lightning |",
        "|---|---|---|---|",
    ]
    for count in (1, 8):
        a, b = parsed.get(("fabric", count)), parsed.get(("lightning", count))
        fa = f"{a * 1000:.1f} ns" if a is not None else "failed"
        fb = f"{b:.2f} us" if b is not None else "failed"
        speed = f"{b / a:.0f}x faster" if a and b else "n/a"
        lines.append(f"| {count} | {fa} | {fb} | {speed} |")
    return lines


def run_allreduce(exes, args):
    # 7.11 MB: the gradients of the medium MLP, what its ddp step all-reduces.
    sizes = ["--short", "--sizes", "7.11"] if args.short else ["--sizes", "4,7.11,64"]
    out = run([exes["allreduce"], *sizes], what="all-reduce")
    lines = [
        "| ranks | size (f32) | fabric (Open MPI) | Gloo (Lightning's CPU backend) | fabric GB/s | Gloo GB/s | fabric / Gloo |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in (out or "").splitlines():
        if line.startswith("RESULT "):
            f = fields(line)
            mb, ours, gloo = float(f["mb"]), float(f["fabric_ms"]), float(f["gloo_ms"])
            gbs = lambda ms: mb / 1024 / (ms / 1000)  # noqa: E731
            lines.append(
                f"| {f['ranks']} | {mb:g} MB | {ours:.2f} ms | {gloo:.2f} ms | {gbs(ours):.2f} | {gbs(gloo):.2f} | {gloo / ours:.1f}x |"
            )
    if len(lines) == 2:
        FAILURES.append("all-reduce: no RESULT line")
    return lines


def run_instructions(exes, args):
    """Instructions per training step, fabric against raw tch, counted by
    callgrind (independent of other load): the difference between runs of
    two step counts, so that start-up cancels out."""
    if shutil.which("valgrind") is None:
        return ["(valgrind is not installed: skipped; Debian: `apt-get install valgrind`)"]
    if args.short:
        return ["(skipped in the short mode: valgrind takes a minute)"]
    # The medium MLP under valgrind takes about 10 minutes (libtorch's and
    # MKL's start-up, four times): only with --instructions-medium.
    plans = [("tiny", "32-true", 100, 600)]
    if args.instructions_medium:
        plans.append(("medium", "32-true", 4, 14))
    lines = [
        "| workload | raw tch | fabric | fabric - raw |",
        "|---|---|---|---|",
    ]
    for model, precision, n1, n2 in plans:
        counts = {}
        for system in ("raw", "fabric"):
            collected = []
            for steps in (n1, n2):
                command = [
                    "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", exes["training"],
                    "--system", system, "--model", model, "--precision", precision,
                    "--warmup", "0", "--repeats", "1", "--steps", steps, "--threads", "1",
                ]
                log(f"instructions: {model} {system} {steps} steps")
                done = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True, timeout=1800)
                found = re.search(r"Collected : (\d+)", done.stderr)
                if done.returncode != 0 or not found:
                    FAILURES.append(f"instructions {model} {system}: {done.stderr[-2000:]}")
                    break
                collected.append(int(found.group(1)))
            if len(collected) == 2:
                counts[system] = (collected[1] - collected[0]) / (n2 - n1)
        label, batch = MODELS[model]
        if len(counts) == 2:
            raw, ours = counts["raw"], counts["fabric"]
            lines.append(
                f"| {label}, batch {batch}, {precision} | {raw:,.0f} | {ours:,.0f} | {ours - raw:+,.0f} ({(ours / raw - 1) * 100:+.2f}%) |"
            )
    return lines


def run_compile(args):
    """Wall time of `cargo build` (dev profile) of the two twins after touching
    their source, alternated, median of the repeats."""
    repeats = 1 if args.short else 9
    subjects = ["compile_attribute", "compile_builder"]
    times = {s: [] for s in subjects}
    for s in subjects:  # build once, so that only the subject recompiles
        if run(["cargo", "build", "--bench", s], timeout=3600, what=f"cargo build --bench {s}") is None:
            return ["| (compile-time build failed) | | |"]
    for i in range(repeats):
        for s in subjects if i % 2 == 0 else reversed(subjects):
            os.utime(ROOT / "benches" / f"{s}.rs")
            start = time.perf_counter()
            if run(["cargo", "build", "--bench", s], timeout=600, what=f"cargo build --bench {s}") is None:
                return ["| (compile-time build failed) | | |"]
            times[s].append(time.perf_counter() - start)
            log(f"compile {s}: {times[s][-1]:.2f} s")
    a, b = statistics.median(times["compile_attribute"]), statistics.median(times["compile_builder"])
    return [
        "| example (the README's, `benches/compile_*.rs`) | `cargo build`, dev profile, after `touch` | difference |",
        "|---|---|---|",
        f"| configured with `#[fabric(...)]` | {a:.2f} s | {a - b:+.2f} s ({(a / b - 1) * 100:+.0f}%) |",
        f"| configured with `Fabric::builder()` | {b:.2f} s | |",
    ]


# ---- report ------------------------------------------------------------------


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 / 1024
    except (OSError, AttributeError):
        mem = 0
    versions = subprocess.run(
        [PYTHON, "-c", "import torch, lightning; print(torch.__version__, lightning.__version__)"],
        capture_output=True, text=True,
    ).stdout.split()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    torch_v, lightning_v = (versions + ["?", "?"])[:2]
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; PyTorch {torch_v}, Lightning {lightning_v}, "
        f"Python {platform.python_version()}, {rustc}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="few steps, one round, debug build (CI)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the training comparisons (3; short: 1)")
    p.add_argument("--repeats", type=int, help="timed repeats per process (5; short: 3)")
    p.add_argument("--warmup", type=int, help="warm-up steps per process (20; short: 5)")
    p.add_argument(
        "--threads", type=int, default=1,
        help="intra-op threads per single process (1); ddp ranks get threads // 2, at least 1",
    )
    p.add_argument(
        "--gpt-threads", type=int, default=2,
        help="intra-op threads of the GPT's single-process runs (2, this machine's cores); its ddp ranks get 1",
    )
    p.add_argument("--profile", help="cargo profile of the benchmark programs (release; short: dev)")
    p.add_argument(
        "--instructions-medium", action="store_true",
        help="also count the medium MLP's instructions per step (about 10 more minutes)",
    )
    p.add_argument(
        "--nice", type=int, default=0,
        help="run the measurements at this niceness, inherited by every system alike (for example -10 on a shared machine, as root)",
    )
    p.add_argument(
        "--only", nargs="+", default=[],
        help="run only these parts: training workloads (tiny, medium-32, medium-bf16-mixed, medium-bf16-true, medium-ddp), gpt, hooks, allreduce, instructions, compile",
    )
    args = p.parse_args()
    args.rounds = args.rounds or (1 if args.short else 3)
    args.repeats = args.repeats or (3 if args.short else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.short else 20)
    args.profile = args.profile or ("dev" if args.short else "release")
    parts = {"training", "gpt", "hooks", "allreduce", "instructions", "compile"}
    training_names = {w[0] for w in workloads(False)}
    unknown = set(args.only) - training_names - parts
    if unknown:
        p.error(f"unknown --only {sorted(unknown)}")

    if shutil.which("mpirun") is None:
        sys.exit("mpirun is missing: run ./dev setup")
    started = time.time()
    load_before = uptime_load()
    exes = build(args.profile)
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError as e:
            sys.exit(f"--nice {args.nice}: {e}")
    sections = []
    if any(wanted(args, name) for name in training_names):
        results = run_training(exes, args)
        speed, cpu, memory = training_table(results, args)
        sections.append(("Training step (median time per step; throughput in samples/s over all processes)", speed))
        sections.append((
            "Process CPU time per step, one process (less sensitive to other load than wall-clock time; ratios as throughput)",
            cpu,
        ))
        sections.append(("Peak resident memory per process (largest rank for ddp)", memory))
    if wanted(args, "gpt"):
        log("the character GPT")
        sections.append((
            "The character GPT of examples/gpt.rs (6 layers, block 128, batch 16; median ms per phase; MFU against the measured matmul peak of the run's type and threads)",
            run_gpt(exes, args),
        ))
    if wanted(args, "hooks"):
        log("hook dispatch")
        sections.append(("Hook dispatch (time per `call`)", run_hooks(exes, args)))
    if wanted(args, "allreduce"):
        log("all-reduce")
        sections.append(("All-reduce (median time per call)", run_allreduce(exes, args)))
    if wanted(args, "instructions"):
        log("instructions per step (callgrind)")
        sections.append((
            "Instructions per training step, counted by callgrind (independent of load)",
            run_instructions(exes, args),
        ))
    if wanted(args, "compile"):
        log("compile time")
        sections.append(("Compile time of an example, with and without the attribute", run_compile(args)))
    load_after = uptime_load()

    mode = "short (smoke test: few steps, one round, debug build; the numbers are not representative)" if args.short else "full"
    out = [
        f"Machine: {machine()}",
        "",
        f"Mode: {mode}; cargo profile `{args.profile}`; {args.threads} intra-op thread(s) per single process, "
        f"{max(1, args.threads // 2)} per ddp rank; {args.rounds} round(s) x {args.repeats} repeats after {args.warmup} warm-up steps"
        f"{f'; niceness {args.nice}' if args.nice else ''}.",
        "",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}; took {time.time() - started:.0f} s.",
    ]
    for title, lines in sections:
        out += ["", f"### {title}", "", *lines]
    report = "\n".join(out)
    print(report)
    target = ROOT / "target" / "bench"
    target.mkdir(parents=True, exist_ok=True)
    (target / "report.md").write_text(report + "\n")
    if FAILURES:
        print("\nFailures:\n" + "\n".join(FAILURES), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
