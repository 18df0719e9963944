"""The character GPT of `examples/gpt.rs` in Lightning Fabric, the Python
side of `benches/gpt.rs`: the same model (`fabric_examples::gpt::Gpt`:
token and position embeddings, pre-LayerNorm blocks with causal
`scaled_dot_product_attention` and a GELU MLP, the output layer tied to the
token embedding), the same text (examples/data/kjv.txt.gz), batch, AdamW
with its two parameter groups, warm-up and cosine schedule, and gradient
clipping at norm 1.

Usage:
  python bench/gpt_lightning.py [--precision 32-true|bf16-mixed] [--devices 1|2]
      [--width 192] [--layers 6] [--block 128] [--batch 16]
      --warmup W --steps S --threads T
  python bench/gpt_lightning.py --peak --threads T   # matrix-multiply peak

Times `--steps` steps after `--warmup`, each phase on its own (the forward
pass with the loss, `fabric.backward`, `fabric.clip_gradients`, the
optimizer's step with `zero_grad` and the scheduler's step); rank 0 prints
`RESULT system=lightning tokens_per_s=.. step_ms=.. forward_ms=..
backward_ms=.. clip_ms=.. optimizer_ms=.. loss_first=.. loss_last=..` (the
times are medians over the timed steps, tokens/s over all ranks from the
total time), and every rank `RSS rank=<r> kb=<peak resident set size>`.
With `--peak`, `PEAK kind=float32|bfloat16 gflops=.. n=..`: the best rate of
square products of up to 2048 x 2048 matrices.
"""
import argparse
import gzip
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def emit(line):
    sys.stdout.flush()
    os.write(1, (line + "\n").encode())


class Block(nn.Module):
    def __init__(self, d, heads, layers):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)
        self.heads = heads
        for lin in (self.qkv, self.fc):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        for lin in (self.attn_proj, self.mlp_proj):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * layers))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab, block, layers, heads, width):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.h = nn.ModuleList(Block(width, heads, layers) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.t()


def corpus():
    text = torch.frombuffer(bytearray(gzip.open(ROOT / "examples/data/kjv.txt.gz").read()), dtype=torch.uint8)
    alphabet = torch.unique(text)
    index = torch.zeros(256, dtype=torch.int64)
    index[alphabet.long()] = torch.arange(len(alphabet))
    ids = index[text.long()]
    return len(alphabet), ids[: len(ids) * 9 // 10]


def peak(threads):
    """The best rate of square matrix products, the size doubled from 256 up
    to 2048 while one product takes under 0.25 s (a CPU without bfloat16
    instructions multiplies bfloat16 matrices at a fraction of a GFLOP/s)."""
    torch.set_num_threads(threads)
    for kind in (torch.float32, torch.bfloat16):
        n, best = 256, 0.0
        while True:
            a, b = torch.randn(n, n).to(kind), torch.randn(n, n).to(kind)
            fastest = float("inf")
            for _ in range(4):
                start = time.perf_counter()
                a @ b
                fastest = min(fastest, time.perf_counter() - start)
            best = max(best, 2 * n**3 / fastest / 1e9)
            if n >= 2048 or fastest > 0.25:
                break
            n *= 2
        emit(f"PEAK kind={str(kind).split('.')[-1]} gflops={best:.1f} threads={threads} n={n}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--precision", default="32-true")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak", action="store_true")
    a = p.parse_args()
    if a.peak:
        peak(a.threads)
        return

    from lightning.fabric import Fabric

    strategy = "ddp" if a.devices > 1 else "auto"
    fabric = Fabric(accelerator="cpu", devices=a.devices, strategy=strategy, precision=a.precision)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    torch.set_num_threads(a.threads)
    fabric.seed_everything(1337)
    vocab, ids = corpus()
    model = Gpt(vocab, a.block, a.layers, a.width // 32, a.width)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "wpe.weight"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "wpe.weight")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
        betas=(0.9, 0.99),
    )
    total, warm = 800, 80

    def factor(step):
        if step < warm:
            return step / warm
        progress = (step - warm) / (total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(1337 + rank)
    offsets = torch.arange(a.block + 1)

    def batch():
        starts = torch.randint(0, len(ids) - a.block - 1, (a.batch,), generator=generator)
        w = ids[starts.unsqueeze(1) + offsets]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    phases = {"forward": [], "backward": [], "clip": [], "optimizer": []}
    losses = []

    def step(record):
        x, y = batch()
        t0 = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        t1 = time.perf_counter()
        fabric.backward(loss)
        t2 = time.perf_counter()
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        t4 = time.perf_counter()
        losses.append(loss.item())
        if record:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[name].append(dt * 1000)

    for _ in range(a.warmup):
        step(False)
    fabric.barrier()
    start = time.perf_counter()
    for _ in range(a.steps):
        step(True)
    fabric.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        tokens = a.steps * a.batch * a.block * world
        median = {k: statistics.median(v) for k, v in phases.items()}
        emit(
            f"RESULT system=lightning tokens_per_s={tokens / elapsed:.1f} step_ms={elapsed / a.steps * 1000:.2f} "
            + " ".join(f"{k}_ms={v:.2f}" for k, v in median.items())
            + f" loss_first={losses[0]:.4f} loss_last={statistics.mean(losses[-5:]):.4f}"
            + f" threads={torch.get_num_threads()} world={world}"
        )
    emit(f"RSS rank={rank} kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


if __name__ == "__main__":
    main()
