"""Training-step throughput of Lightning Fabric (and of a plain PyTorch loop),
the Python side of `benches/training.rs`: the same models, batch, optimizer,
step count and thread settings as fabric's and raw tch's runs.

Usage:
  python bench/train_lightning.py --system lightning|torch --model tiny|medium|large|wide
      [--precision 32-true|bf16-mixed|bf16-true] [--devices 1|2] [--accelerator cpu|cuda]
      --warmup W --repeats R --steps S --threads T

Each repeat times S steps; the line `RESULT ...` (from rank 0) gives the
median milliseconds per step over the repeats, and every repeat's figure in
wall-clock (`all=`) and process CPU time (`cpu=`).
Every rank prints `RSS rank=<r> kb=<peak resident set size>`. With
`--accelerator cuda` (one GPU), the timed region starts and ends with a CUDA
synchronisation, and `CUDA used_mb=.. peak_reserved_mb=.. peak_allocated_mb=..`
gives the device memory in use at the end (`torch.cuda.mem_get_info`, as the
Rust side measures it) and the caching allocator's peaks.
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

MODELS = {
    "tiny": [32, 64, 10],
    "medium": [784, 1024, 1024, 10],
    # 10.5M parameters: ddp's averaging is not negligible on CPUs.
    "large": [1024, 2048, 2048, 2048, 10],
    # For a GPU: 176M parameters, about 1.1 TFLOP per step at batch 1024.
    "wide": [4096, 8192, 8192, 8192, 1000],
}


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def emit(line):
    """One line in one write, so that the ranks' lines do not interleave."""
    sys.stdout.flush()
    os.write(1, (line + "\n").encode())


def batch_size(model):
    return {"tiny": 32, "wide": 1024}.get(model, 64)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--system", choices=["lightning", "torch"], required=True)
    p.add_argument("--model", choices=list(MODELS), required=True)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    a = p.parse_args()

    sizes = MODELS[a.model]
    rank, world = 0, 1
    cuda = a.accelerator == "cuda"
    if cuda:
        if a.devices != 1:
            sys.exit("--accelerator cuda runs one process on one GPU (--devices 1)")
        if not torch.cuda.is_available():
            sys.exit("CUDA is unavailable: --accelerator cuda needs an NVIDIA GPU and its driver")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if a.system == "lightning":
        from lightning.fabric import Fabric

        strategy = "ddp" if a.devices > 1 else "auto"
        fabric = Fabric(accelerator=a.accelerator, devices=a.devices, strategy=strategy, precision=a.precision)
        fabric.launch()
        rank, world = fabric.global_rank, fabric.world_size
        # After launch: Lightning's DDP sets its own thread count.
        torch.set_num_threads(a.threads)
        fabric.seed_everything(42 + rank)
        model = mlp(sizes)
        optimizer = torch.optim.SGD(model.parameters(), lr=a.lr)
        model, optimizer = fabric.setup(model, optimizer)
        backward, barrier = fabric.backward, fabric.barrier
    else:
        if a.precision != "32-true" or a.devices != 1:
            sys.exit("the plain PyTorch loop runs 32-true on one process only")
        torch.set_num_threads(a.threads)
        torch.manual_seed(42)
        model = mlp(sizes).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=a.lr)

        def backward(loss):
            loss.backward()

        def barrier():
            pass

    n = batch_size(a.model)
    x = torch.randn(n, sizes[0]).to(device)
    y = torch.randint(0, sizes[-1], (n,)).to(device)

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    def step():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        backward(loss)
        optimizer.step()

    for _ in range(a.warmup):
        step()
    times, cpu = [], []
    for _ in range(a.repeats):
        barrier()
        synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(a.steps):
            step()
        synchronize()
        times.append((time.perf_counter() - start) / a.steps * 1000.0)
        cpu.append((time.process_time() - start_cpu) / a.steps * 1000.0)
    barrier()
    if rank == 0:
        listed = lambda v: ",".join(f"{t:.4f}" for t in v)  # noqa: E731
        emit(
            f"RESULT system={a.system} ms_per_step={statistics.median(times):.4f} "
            f"threads={torch.get_num_threads()} world={world} all={listed(times)} cpu={listed(cpu)}"
        )
    emit(f"RSS rank={rank} kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
    if cuda:
        free, total = torch.cuda.mem_get_info()
        mib = 1024 * 1024
        emit(
            f"CUDA used_mb={(total - free) / mib:.0f} "
            f"peak_reserved_mb={torch.cuda.max_memory_reserved() / mib:.0f} "
            f"peak_allocated_mb={torch.cuda.max_memory_allocated() / mib:.0f}"
        )


if __name__ == "__main__":
    main()
