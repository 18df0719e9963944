//! All-reduce bandwidth: fabric's Open MPI collectives against PyTorch's
//! Gloo (Lightning Fabric's CPU backend), on this machine, in one run.
//!
//! `cargo bench --bench allreduce` prints, for 2 and 4 ranks and 4 MB and
//! 64 MB of f32, the median time of an all-reduce after warm-up, as a table
//! and as `RESULT` lines (which `bench/suite.py` reads). With `--short`:
//! 2 ranks and 4 MB only, fewer repeats. `--mpi` adds fabric with its
//! shared-memory all-reduce turned off (`FABRIC_MPI_SHARED_MEMORY=0`: Open
//! MPI's `MPI_Allreduce`); `--rounds N` runs the whole sequence N times,
//! interleaved, and reports each figure's median over the rounds.

use std::process::Command;
use std::time::Instant;

use fabric::{Fabric, ReduceOp};
use tch::{Device, Kind, Tensor};

const SIZES_MB: [f64; 2] = [4.0, 64.0];
const WARMUP: usize = 5;
const REPEATS: usize = 20;

fn flag_value(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// What this run measures: (ranks, sizes in MB, warm-up, repeats).
/// `--ranks 2,4` and `--sizes 4,64` override the defaults.
fn plan() -> (Vec<usize>, Vec<f64>, usize, usize) {
    let args: Vec<String> = std::env::args().collect();
    let list = |flag: &str| {
        flag_value(flag).map(|v| {
            v.split(',')
                .filter_map(|x| x.parse().ok())
                .collect::<Vec<f64>>()
        })
    };
    let (mut ranks, mut sizes, warmup, repeats) = if args.iter().any(|a| a == "--short") {
        (vec![2], vec![SIZES_MB[0]], 2, 5)
    } else {
        (vec![2, 4], SIZES_MB.to_vec(), WARMUP, REPEATS)
    };
    if let Some(r) = list("--ranks") {
        ranks = r.into_iter().map(|r| r as usize).collect();
    }
    if let Some(s) = list("--sizes") {
        sizes = s;
    }
    (ranks, sizes, warmup, repeats)
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// In each rank: times the all-reduces; rank 0 prints the medians.
fn ranks(world: usize) {
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .devices(world)
        .build_or_launch()
        .unwrap();
    let (_, sizes, warmup, repeats) = plan();
    for mb in &sizes {
        check(&fabric, (*mb * 1024.0 * 1024.0 / 4.0) as i64 + 3);
    }
    for mb in sizes {
        let x = Tensor::ones(
            [(mb * 1024.0 * 1024.0 / 4.0) as i64],
            (Kind::Float, Device::Cpu),
        );
        let mut times = Vec::new();
        for i in 0..warmup + repeats {
            fabric.barrier().unwrap();
            let start = Instant::now();
            let _ = fabric.all_reduce(&x, ReduceOp::Sum).unwrap();
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        if fabric.is_global_zero() {
            let system = std::env::var("BENCH_SYSTEM").unwrap_or_else(|_| "fabric".into());
            println!(
                "{system} ranks={world} mb={mb} median_ms={:.3}",
                median(times) * 1000.0
            );
        }
    }
}

/// Checks that an all-reduce of `n` elements (an odd count, so that the
/// chunks and parts are uneven) gives every element its exact sum, maximum
/// and mean, in f32 and f64.
fn check(fabric: &Fabric, n: i64) {
    let rank = fabric.global_rank() as f64;
    let world = fabric.world_size() as f64;
    let pattern = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(1000);
    for kind in [Kind::Float, Kind::Double] {
        let mine = (&pattern + rank).to_kind(kind);
        let sum = fabric.all_reduce(&mine, ReduceOp::Sum).unwrap();
        let expected = (&pattern * world + world * (world - 1.0) / 2.0).to_kind(kind);
        assert!(sum.equal(&expected), "wrong all-reduce sum of {n} {kind:?}");
        let max = fabric.all_reduce(&mine, ReduceOp::Max).unwrap();
        let expected = (&pattern + (world - 1.0)).to_kind(kind);
        assert!(max.equal(&expected), "wrong all-reduce max of {n} {kind:?}");
        let mean = fabric.all_reduce(&mine, ReduceOp::Mean).unwrap();
        let expected = (&pattern + (world - 1.0) / 2.0).to_kind(kind);
        assert!(
            mean.equal(&expected),
            "wrong all-reduce mean of {n} {kind:?}"
        );
    }
}

fn parse(text: &str) -> Vec<(String, usize, f64, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let system = parts.next()?.to_owned();
            let fields: Vec<_> = parts.filter_map(|p| p.split_once('=')).collect();
            let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
            Some((
                system,
                get("ranks")?.parse().ok()?,
                get("mb")?.parse().ok()?,
                get("median_ms")?.parse().ok()?,
            ))
        })
        .collect()
}

fn main() {
    if let Ok(world) = std::env::var("BENCH_RANKS") {
        return ranks(world.parse().unwrap());
    }
    // The Python of the project's venv, or the one `./dev bench` names.
    let python = std::env::var("FABRIC_BENCH_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/allreduce_gloo.py");
    let (worlds, sizes, warmup, repeats) = plan();
    let compare_mpi = std::env::args().any(|a| a == "--mpi");
    let rounds: usize = flag_value("--rounds")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut runs = Vec::new();
    for _ in 0..rounds {
        for &world in &worlds {
            let exe = std::env::current_exe().unwrap();
            let mut systems = vec![("fabric", "1")];
            if compare_mpi {
                systems.push(("fabric_mpi", "0"));
            }
            for (system, shared) in systems {
                let ours = Command::new(&exe)
                    .args(std::env::args_os().skip(1))
                    .env("BENCH_RANKS", world.to_string())
                    .env("BENCH_SYSTEM", system)
                    .env("FABRIC_MPI_SHARED_MEMORY", shared)
                    .output()
                    .unwrap();
                runs.extend(parse(&String::from_utf8_lossy(&ours.stdout)));
            }
            let mut gloo = Command::new(&python);
            gloo.arg(script)
                .env("GLOO_WARMUP", warmup.to_string())
                .env("GLOO_REPEATS", repeats.to_string())
                .arg(world.to_string())
                .args(sizes.iter().map(|s| s.to_string()));
            let gloo = gloo.output().unwrap();
            if !gloo.status.success() {
                eprintln!("gloo run failed: {}", String::from_utf8_lossy(&gloo.stderr));
            }
            runs.extend(parse(&String::from_utf8_lossy(&gloo.stdout)));
        }
    }
    // Each figure: the median over the rounds of each round's median.
    let mut rows: Vec<(String, usize, f64, f64)> = Vec::new();
    for run in &runs {
        if !rows
            .iter()
            .any(|r| r.0 == run.0 && r.1 == run.1 && r.2 == run.2)
        {
            let times = runs
                .iter()
                .filter(|r| r.0 == run.0 && r.1 == run.1 && r.2 == run.2)
                .map(|r| r.3)
                .collect();
            rows.push((run.0.clone(), run.1, run.2, median(times)));
        }
    }
    if rounds > 1 {
        println!("(median of {rounds} interleaved rounds)");
    }
    let mpi_header = if compare_mpi {
        " fabric, `MPI_Allreduce` |"
    } else {
        ""
    };
    println!(
        "| ranks | size | fabric (Open MPI) |{mpi_header} Gloo | fabric GB/s | Gloo GB/s | speed-up |"
    );
    println!(
        "|---|---|---|{}---|---|---|---|",
        if compare_mpi { "---|" } else { "" }
    );
    let mut lines = Vec::new();
    for &world in &worlds {
        for &mb in &sizes {
            let find = |system: &str| {
                rows.iter()
                    .find(|r| r.0 == system && r.1 == world && r.2 == mb)
                    .map(|r| r.3)
            };
            if let (Some(ours), Some(gloo)) = (find("fabric"), find("gloo")) {
                let bandwidth = |ms: f64| mb / 1024.0 / (ms / 1000.0);
                let (mpi_cell, mpi_field) = match find("fabric_mpi") {
                    Some(ms) => (format!(" {ms:.2} ms |"), format!(" fabric_mpi_ms={ms:.4}")),
                    None => (String::new(), String::new()),
                };
                println!(
                    "| {world} | {mb} MB | {ours:.2} ms |{mpi_cell} {gloo:.2} ms | {:.2} | {:.2} | {:.1}x |",
                    bandwidth(ours),
                    bandwidth(gloo),
                    gloo / ours
                );
                lines.push(format!(
                    "RESULT ranks={world} mb={mb} fabric_ms={ours:.4} gloo_ms={gloo:.4}{mpi_field}"
                ));
            }
        }
    }
    for line in lines {
        println!("{line}");
    }
}
