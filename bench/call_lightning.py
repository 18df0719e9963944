"""Hook dispatch of Lightning Fabric: `fabric.call("on_train_epoch_end", ...)`
with 1 and 8 registered callbacks, the Python side of `benches/hooks.rs`.

Usage: python bench/call_lightning.py --calls N --repeats R [--callbacks 1 8]

Every callback's hook does the same small thing as the Rust ones: it reads
one metric and adds it to a running total. Prints one line per callback
count: `RESULT callbacks=<n> us_per_call=<median> all=<every repeat>`.
"""
import argparse
import statistics
import time

from lightning.fabric import Fabric


class Accumulate:
    def __init__(self):
        self.total = 0.0

    def on_train_epoch_end(self, epoch, results):
        self.total += results["loss"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--callbacks", type=int, nargs="+", default=[1, 8])
    a = p.parse_args()
    for count in a.callbacks:
        callbacks = [Accumulate() for _ in range(count)]
        fabric = Fabric(accelerator="cpu", devices=1, callbacks=callbacks)
        results = {"loss": 0.5, "accuracy": 0.9}
        for epoch in range(a.calls // 10):  # warm-up
            fabric.call("on_train_epoch_end", epoch, results=results)
        times = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            for epoch in range(a.calls):
                fabric.call("on_train_epoch_end", epoch, results=results)
            times.append((time.perf_counter() - start) / a.calls * 1e6)
        expected = 0.5 * (a.calls // 10 + a.calls * a.repeats)
        assert all(abs(c.total - expected) < 1e-6 * expected for c in callbacks)
        every = ",".join(f"{t:.4f}" for t in times)
        print(f"RESULT callbacks={count} us_per_call={statistics.median(times):.4f} all={every}", flush=True)


if __name__ == "__main__":
    main()
