"""Reference values for tests/optim.rs: runs torch.optim on the parameters
and gradients the Rust test wrote, and writes the final parameters and
optimizer state.

usage: optim_reference.py JOBS_JSON

JOBS is a list of {"input": path, "output": path, "config": {...}}. Each
input holds `param/<i>` (initial values) and `grad/<step>/<i>`; config is
{"algorithm": "sgd" | "adam" | "adamw", "steps": n, "kwargs": {...}}.
Each output holds `param/<i>` and `state/<i>/<name>` after the steps.
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file


def run(source: str, target: str, config: dict) -> None:
    tensors = load_file(source)
    count = sum(1 for k in tensors if k.startswith("param/"))
    params = [torch.nn.Parameter(tensors[f"param/{i}"].clone()) for i in range(count)]
    kwargs = config["kwargs"]
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    optimizer = cls[config["algorithm"]](params, **kwargs)
    for step in range(config["steps"]):
        for i, p in enumerate(params):
            p.grad = tensors[f"grad/{step}/{i}"].clone()
        optimizer.step()
    out = {f"param/{i}": p.detach().clone() for i, p in enumerate(params)}
    for i, p in enumerate(params):
        for name, value in optimizer.state[p].items():
            out[f"state/{i}/{name}"] = value.detach().clone().reshape(value.shape)
    save_file(out, target)


if __name__ == "__main__":
    for job in json.loads(sys.argv[1]):
        run(job["input"], job["output"], job["config"])
