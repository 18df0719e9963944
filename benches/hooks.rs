//! Hook dispatch: fabric's typed `fabric.call::<OnTrainEpochEnd>(..)` with 1
//! and 8 registered callbacks, the Rust side of `bench/call_lightning.py`
//! (Lightning Fabric's `fabric.call("on_train_epoch_end", ...)`).
//!
//! `cargo bench --bench hooks -- --calls N --repeats R` prints one line per
//! callback count: `RESULT callbacks=<n> us_per_call=<median> all=<..>`.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use fabric::hooks::{Metrics, OnTrainEpochEnd};
use fabric::{Callback, Fabric, hooks};

/// Reads one metric and adds it to a running total, as the Python callback.
#[derive(Callback, Default)]
struct Accumulate {
    total: f64,
}

#[hooks]
impl Accumulate {
    #[hook]
    fn on_train_epoch_end(&mut self, _epoch: usize, metrics: &Metrics) {
        self.total += metrics.get("loss").unwrap_or(0.0);
    }
}

fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    let (mut calls, mut repeats) = (1_000_000usize, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--bench" => {}
            "--calls" => calls = it.next().context("--calls N")?.parse()?,
            "--repeats" => repeats = it.next().context("--repeats R")?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    ensure!(
        calls > 0 && repeats > 0,
        "--calls and --repeats must be at least 1"
    );
    let metrics = Metrics::from([("loss", 0.5), ("accuracy", 0.9)]);
    for count in [1usize, 8] {
        let mut builder = Fabric::builder().accelerator("cpu").devices(1);
        for _ in 0..count {
            builder = builder.callback(Accumulate::default());
        }
        let mut fabric = builder.build()?;
        for epoch in 0..calls / 10 {
            black_box(fabric.call::<OnTrainEpochEnd>((epoch, black_box(&metrics)))?);
        }
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let start = Instant::now();
            for epoch in 0..calls {
                black_box(fabric.call::<OnTrainEpochEnd>((epoch, black_box(&metrics)))?);
            }
            times.push(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
        }
        let total = fabric.callback::<Accumulate>().map_or(0.0, |c| c.total);
        ensure!(
            total == 0.5 * (calls / 10 + calls * repeats) as f64,
            "the hooks did not all run"
        );
        let every: Vec<String> = times.iter().map(|t| format!("{t:.5}")).collect();
        println!(
            "RESULT callbacks={count} us_per_call={:.5} all={}",
            median(&times),
            every.join(",")
        );
    }
    Ok(())
}
