"""All-reduce bandwidth of PyTorch's Gloo backend (what Lightning Fabric
uses on the CPU), for comparison with fabric's Open MPI collectives.

Usage: python bench/allreduce_gloo.py RANKS SIZE_MB [SIZE_MB ...]
Prints one line per size: `gloo ranks=<n> mb=<size> median_ms=<t>`.
"""
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WARMUP = int(os.environ.get("GLOO_WARMUP", 5))
REPEATS = int(os.environ.get("GLOO_REPEATS", 20))


def worker(rank, world, sizes, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for mb in sizes:
        x = torch.ones(int(mb * 1024 * 1024 / 4), dtype=torch.float32)
        times = []
        for i in range(WARMUP + REPEATS):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
        if rank == 0:
            print(f"gloo ranks={world} mb={mb:g} median_ms={statistics.median(times) * 1000:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1])
    sizes = [float(s) for s in sys.argv[2:]]
    mp.spawn(worker, args=(world, sizes, 29600 + world), nprocs=world)
