"""Reference values for tests/schedulers.rs, from the venv's PyTorch.

usage: scheduler_reference.py JOBS_JSON OUTPUT_JSON

JOBS is a list of jobs; OUTPUT gets one result per job, in order. Floats
cross as the integers of their IEEE-754 bits, so that they compare exactly.

- {"job": "schedule", "optimizer": "sgd" | "adamw", "lrs": [...], "steps": n,
   "scheduler": {...}}: an optimizer with one parameter group per entry of
  `lrs`, the scheduler, then `steps` times optimizer.step() and
  scheduler.step(). Result: {"lrs": [[bits per group] per step, the
  constructor's first], "momentums": [...], "error_at": step or null} (the
  step whose scheduler.step() raised, as OneCycleLR past its total).
- {"job": "groups", "input": path, "output": path, "groups": [{"params":
   [indices], "lr": x, "weight_decay": y}], "kwargs": {...}, "steps": n,
  "scheduler": {...} or null}: torch.optim.AdamW over those groups on
  `param/<i>` with gradients `grad/<step>/<i>`; writes `param/<i>` and
  `state/<i>/<name>`.
- {"job": "clip", "input": path, "max_norm": x, "norm_type": y}: sets the
  gradients `grad/<i>`, runs torch.nn.utils.clip_grad_norm_ over all of
  them; result: {"total": bits, "grads": path} with the clipped `grad/<i>`.

A scheduler is {"kind": "step" | "linear" | "cosine_annealing" |
"one_cycle" | "lambda_pow" | "warmup_cosine", ...its arguments}.
"""

import json
import math
import struct
import sys

import torch
from safetensors.torch import load_file, save_file


def bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def warmup_cosine(warmup: int, total: int, min_lr_rate: float):
    """transformers' _get_cosine_schedule_with_warmup_lr_lambda, num_cycles 0.5."""

    def factor(current_step: int) -> float:
        if current_step < warmup:
            return float(current_step) / float(max(1, warmup))
        progress = float(current_step - warmup) / float(max(1, total - warmup))
        value = 0.5 * (1.0 + math.cos(math.pi * float(0.5) * 2.0 * progress))
        value = value * (1 - min_lr_rate) + min_lr_rate
        return max(0, value)

    return factor


def scheduler(optimizer, spec):
    s = torch.optim.lr_scheduler
    kind = spec["kind"]
    if kind == "step":
        return s.StepLR(optimizer, step_size=spec["step_size"], gamma=spec["gamma"])
    if kind == "linear":
        return s.LinearLR(optimizer, start_factor=spec["start_factor"],
                          end_factor=spec["end_factor"], total_iters=spec["total_iters"])
    if kind == "cosine_annealing":
        return s.CosineAnnealingLR(optimizer, T_max=spec["t_max"], eta_min=spec["eta_min"])
    if kind == "one_cycle":
        return s.OneCycleLR(optimizer, max_lr=spec["max_lr"], total_steps=spec["total_steps"],
                            pct_start=spec["pct_start"], anneal_strategy=spec["anneal"],
                            three_phase=spec["three_phase"], div_factor=spec["div_factor"],
                            final_div_factor=spec["final_div_factor"])
    if kind == "lambda_pow":
        base = spec["base"]
        return s.LambdaLR(optimizer, lambda epoch: base ** epoch)
    if kind == "warmup_cosine":
        return s.LambdaLR(optimizer, warmup_cosine(spec["warmup_steps"], spec["total_steps"],
                                                   spec["min_lr_ratio"]))
    raise ValueError(kind)


def momentums(optimizer):
    return [bits(g["betas"][0] if "betas" in g else g["momentum"]) for g in optimizer.param_groups]


def schedule(job):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in job["lrs"]]
    if job["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(groups, lr=job["lrs"][0], momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(groups, lr=job["lrs"][0])
    sched = scheduler(optimizer, job["scheduler"])
    lrs = [[bits(x) for x in sched.get_last_lr()]]
    moms = [momentums(optimizer)]
    error_at = None
    for step in range(job["steps"]):
        optimizer.step()
        try:
            sched.step()
        except ValueError:
            error_at = step
            break
        lrs.append([bits(x) for x in sched.get_last_lr()])
        moms.append(momentums(optimizer))
    return {"lrs": lrs, "momentums": moms, "error_at": error_at}


def groups(job):
    tensors = load_file(job["input"])
    count = sum(1 for k in tensors if k.startswith("param/"))
    params = [torch.nn.Parameter(tensors[f"param/{i}"].clone()) for i in range(count)]
    param_groups = [
        {"params": [params[i] for i in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
        for g in job["groups"]
    ]
    optimizer = torch.optim.AdamW(param_groups, **job["kwargs"])
    sched = scheduler(optimizer, job["scheduler"]) if job["scheduler"] else None
    for step in range(job["steps"]):
        for i, p in enumerate(params):
            p.grad = tensors[f"grad/{step}/{i}"].clone()
        optimizer.step()
        if sched is not None:
            sched.step()
    out = {f"param/{i}": p.detach().clone() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for name, value in optimizer.state[p].items():
            out[f"state/{i}/{name}"] = value.detach().clone().reshape(value.shape)
    save_file(out, job["output"])
    return {}


def clip(job):
    tensors = load_file(job["input"])
    count = sum(1 for k in tensors if k.startswith("grad/"))
    params = []
    for i in range(count):
        grad = tensors[f"grad/{i}"].clone()
        p = torch.nn.Parameter(torch.zeros_like(grad))
        p.grad = grad
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, job["max_norm"], job["norm_type"])
    save_file({f"grad/{i}": p.grad for i, p in enumerate(params)}, job["output"])
    return {"total": bits(total.item())}


if __name__ == "__main__":
    jobs = json.loads(sys.argv[1])
    run = {"schedule": schedule, "groups": groups, "clip": clip}
    results = [run[job["job"]](job) for job in jobs]
    with open(sys.argv[2], "w") as out:
        json.dump(results, out)
