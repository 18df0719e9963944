//! Real multi-process runs on the CPU: `ddp` started by fabric, by `mpirun`
//! and under simulated SLURM and torchrun environments, `ddp_spawn`,
//! collectives, sharding, and failures.
//!
//! Each test re-runs this test binary as a child process (`FABRIC_SCENARIO`
//! names what to do, `common::Scenario`); in the child, fabric's launcher
//! (or `mpirun`, started by the test) runs the ranks, which are this binary
//! again.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Fabric, ReduceOp};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use common::{Scenario, in_scenario};

/// In the environment of every process a test starts, so that it can find
/// what a run left behind ([`leftovers`]).
const TOKEN: &str = "FABRIC_TEST_TOKEN";

/// Test `test` of this binary, run as a child with `FABRIC_SCENARIO` set.
fn this_test(test: &str, token: &str) -> Scenario {
    Scenario::direct(test).env(TOKEN, token)
}

/// Test `test` under `mpirun`, one rank for each entry of `processes`, with
/// its environment.
fn mpirun(processes: &[Vec<(&str, String)>], test: &str, token: &str) -> Scenario {
    Scenario::mpirun_ranks(test, processes).env(TOKEN, token)
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn run(scenario: Scenario) -> (Output, String) {
    let run = scenario.run();
    (run.output, run.text)
}

/// `RESULT key=value ...` lines printed by the ranks, by rank.
fn results(text: &str) -> BTreeMap<usize, BTreeMap<String, String>> {
    let mut by_rank = BTreeMap::new();
    for line in text
        .lines()
        .filter_map(|l| l.find("RESULT ").map(|i| &l[i + 7..]))
    {
        let fields: BTreeMap<String, String> = line
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let rank = fields["rank"].parse().unwrap();
        by_rank.insert(rank, fields);
    }
    by_rank
}

/// Processes whose environment holds `token`: what a run left behind.
fn leftovers(token: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.windows(token.len()).any(|w| w == token.as_bytes()) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.retain(|pid| pid.parse::<u32>().ok() != Some(std::process::id()));
    found
}

// ---- the training both sides run --------------------------------------

const SAMPLES: i64 = 48;
const GLOBAL_BATCH: usize = 8;

fn data() -> (Tensor, Tensor) {
    let x = (Tensor::arange(SAMPLES * 8, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([SAMPLES, 8]);
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1, 0.0, 1.5, -0.3, 0.8]).view([8, 1]);
    let y = x.matmul(&w).cos().repeat([1, 3]);
    (x, y)
}

/// Trains a linear model with SGD and momentum for one epoch in batches of
/// `batch` per process; returns the parameters, flattened.
fn train_linear(fabric: &mut Fabric, batch: usize) -> Vec<f32> {
    fabric.seed_everything(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(vs.root(), 8, 3, Default::default());
    let opt = nn::Sgd {
        momentum: 0.9,
        ..Default::default()
    }
    .build(&vs, 0.05)
    .unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let mut loader = fabric
        .setup_dataloaders(DataLoader::new(TensorDataset::new(data()).unwrap()).batch_size(batch))
        .unwrap();
    for batch in &mut loader {
        let (x, y) = batch.unwrap();
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
    }
    let mut names: Vec<_> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names
        .iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.view([-1])).unwrap())
        .collect()
}

fn print_params(fabric: &Fabric, params: &[f32]) {
    let bits: Vec<String> = params
        .iter()
        .map(|p| format!("{:08x}", p.to_bits()))
        .collect();
    println!(
        "RESULT rank={} world={} local={} node={} env={} params={}",
        fabric.global_rank(),
        fabric.world_size(),
        fabric.local_rank(),
        fabric.node_rank(),
        fabric.environment_name().replace(' ', "_"),
        bits.join(",")
    );
}

fn decode(params: &str) -> Vec<f32> {
    params
        .split(',')
        .map(|h| f32::from_bits(u32::from_str_radix(h, 16).unwrap()))
        .collect()
}

fn reference() -> Vec<f32> {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .build_or_launch()
        .unwrap();
    // Seeded, then initialised: no other test may draw in between.
    let _rng = common::rng_lock();
    train_linear(&mut fabric, GLOBAL_BATCH)
}

fn assert_matches_reference(text: &str, world: usize) -> BTreeMap<usize, BTreeMap<String, String>> {
    let results = results(text);
    assert_eq!(
        results.len(),
        world,
        "one result per rank expected:\n{text}"
    );
    let expected = reference();
    let first = &results[&0]["params"];
    for (rank, fields) in &results {
        assert_eq!(
            &fields["params"], first,
            "rank {rank} ended with other parameters than rank 0"
        );
        assert_eq!(fields["world"], world.to_string());
    }
    let got = decode(first);
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            (g - e).abs() < 1e-5,
            "ddp {got:?}\nsingle process on the whole batch {expected:?}"
        );
    }
    results
}

// ---- the tests ----------------------------------------------------------

fn ddp_run(test: &str, world: usize) {
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(world)
            .build_or_launch()
            .unwrap();
        let params = train_linear(&mut fabric, GLOBAL_BATCH / world);
        print_params(&fabric, &params);
        return;
    }
    let token = token();
    let (output, text) = run(this_test(test, &token));
    assert!(output.status.success(), "{text}");
    let results = assert_matches_reference(&text, world);
    for (rank, fields) in results {
        assert_eq!(fields["local"], rank.to_string());
        assert_eq!(fields["env"], "Open_MPI");
    }
    assert!(leftovers(&token).is_empty());
}

#[test]
fn ddp_on_two_processes_matches_one_process_on_the_whole_batch() {
    ddp_run(
        "ddp_on_two_processes_matches_one_process_on_the_whole_batch",
        2,
    );
}

#[test]
fn ddp_on_four_oversubscribed_processes_matches_one_process() {
    ddp_run(
        "ddp_on_four_oversubscribed_processes_matches_one_process",
        4,
    );
}

#[test]
fn the_same_program_runs_under_mpirun() {
    let test = "the_same_program_runs_under_mpirun";
    if in_scenario(test) {
        // No `devices`: the ranks come from mpirun.
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .build_or_launch()
            .unwrap();
        let params = train_linear(&mut fabric, GLOBAL_BATCH / 2);
        print_params(&fabric, &params);
        return;
    }
    let token = token();
    let (output, text) = run(mpirun(&[vec![], vec![]], test, &token));
    assert!(output.status.success(), "{text}");
    assert_matches_reference(&text, 2);
}

fn ddp_spawn_train(fabric: &mut Fabric) -> fabric::Result<(usize, usize, Vec<f32>)> {
    let params = train_linear(fabric, GLOBAL_BATCH / 4);
    Ok((fabric.global_rank(), fabric.world_size(), params))
}

#[test]
fn ddp_spawn_with_four_processes_returns_rank_zeros_result() {
    let test = "ddp_spawn_with_four_processes_returns_rank_zeros_result";
    if in_scenario(test) {
        let builder = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp_spawn")
            .devices(4);
        let (rank, world, params) = builder.launch_spawn(ddp_spawn_train).unwrap();
        // Only the launching process gets here: the workers end after the function.
        println!(
            "SPAWNED rank={rank} world={world} pid={}",
            std::process::id()
        );
        let expected = reference();
        let close = params
            .iter()
            .zip(&expected)
            .all(|(a, b)| (a - b).abs() < 1e-5);
        println!("SPAWNED matches_reference={close}");
        return;
    }
    let token = token();
    let (output, text) = run(this_test(test, &token));
    assert!(output.status.success(), "{text}");
    let spawned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("SPAWNED rank="))
        .collect();
    assert_eq!(
        spawned.len(),
        1,
        "only the launching process continues after the function:\n{text}"
    );
    assert!(spawned[0].contains("rank=0 world=4"), "{text}");
    assert!(text.contains("SPAWNED matches_reference=true"), "{text}");
    assert!(leftovers(&token).is_empty());
}

fn slurm(
    rank: usize,
    local: usize,
    node: usize,
    tasks: usize,
    nodes: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_NTASKS", tasks.to_string()),
        ("SLURM_PROCID", rank.to_string()),
        ("SLURM_LOCALID", local.to_string()),
        ("SLURM_NODEID", node.to_string()),
        ("SLURM_JOB_NODELIST", nodes.to_string()),
        ("SLURM_JOB_NAME", "train".to_string()),
        ("SLURM_JOB_ID", "4242".to_string()),
    ]
}

#[test]
fn a_slurm_environment_drives_the_ranks() {
    let test = "a_slurm_environment_drives_the_ranks";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        let params = train_linear(&mut fabric, GLOBAL_BATCH / 2);
        print_params(&fabric, &params);
        return;
    }
    let token = token();
    // MPI's rank 0 is SLURM's rank 1: SLURM's numbering must win.
    let ranks = [slurm(1, 1, 0, 2, "node01"), slurm(0, 0, 0, 2, "node01")];
    let (output, text) = run(mpirun(&ranks, test, &token));
    assert!(output.status.success(), "{text}");
    let results = assert_matches_reference(&text, 2);
    assert!(results.values().all(|f| f["env"] == "SLURM"), "{text}");
}

#[test]
fn two_simulated_nodes_of_two_processes() {
    let test = "two_simulated_nodes_of_two_processes";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .num_nodes(2)
            .build_or_launch()
            .unwrap();
        let params = train_linear(&mut fabric, GLOBAL_BATCH / 4);
        print_params(&fabric, &params);
        fabric.print(format!("PRINTED by rank {}", fabric.global_rank()));
        return;
    }
    let token = token();
    let nodes = "node[1-2]";
    let ranks = [
        slurm(0, 0, 0, 4, nodes),
        slurm(1, 1, 0, 4, nodes),
        slurm(2, 0, 1, 4, nodes),
        slurm(3, 1, 1, 4, nodes),
    ];
    let (output, text) = run(mpirun(&ranks, test, &token));
    assert!(output.status.success(), "{text}");
    let results = assert_matches_reference(&text, 4);
    for (rank, fields) in results {
        assert_eq!(fields["node"], (rank / 2).to_string(), "{text}");
        assert_eq!(fields["local"], (rank % 2).to_string(), "{text}");
    }
    // `print` speaks once per node, from its local rank 0, as Lightning's.
    let mut printed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("PRINTED by ").nth(1))
        .collect();
    printed.sort();
    assert_eq!(printed, ["rank 0", "rank 2"], "{text}");
}

fn torchrun(rank: usize, world: usize) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("LOCAL_WORLD_SIZE", world.to_string()),
        ("GROUP_RANK", "0".to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", "29511".to_string()),
        ("TORCHELASTIC_RUN_ID", "test".to_string()),
    ]
}

#[test]
fn fabric_launches_its_ranks_inside_a_one_task_slurm_job() {
    let test = "fabric_launches_its_ranks_inside_a_one_task_slurm_job";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        let params = train_linear(&mut fabric, GLOBAL_BATCH / 2);
        print_params(&fabric, &params);
        return;
    }
    // One SLURM task asking for 2 devices: fabric starts the 2 ranks,
    // which must see themselves as Open MPI ranks (not as the one SLURM
    // task whose variables they inherit, which would launch again).
    let token = token();
    let mut scenario = this_test(test, &token);
    for (name, value) in slurm(0, 0, 0, 1, "node01") {
        scenario = scenario.env(name, value);
    }
    let (output, text) = run(scenario);
    assert!(output.status.success(), "{text}");
    let results = assert_matches_reference(&text, 2);
    assert!(results.values().all(|f| f["env"] == "Open_MPI"), "{text}");
    assert!(leftovers(&token).is_empty());
}

#[test]
fn with_little_shared_memory_the_all_reduce_falls_back_to_open_mpis() {
    let test = "with_little_shared_memory_the_all_reduce_falls_back_to_open_mpis";
    if in_scenario(test) {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        let base = Tensor::arange(1_300_001, (Kind::Float, Device::Cpu));
        let mine = &base * (fabric.global_rank() as f64 + 1.0);
        let reduced = fabric.all_reduce(&mine, ReduceOp::Sum).unwrap();
        assert!(reduced.equal(&(&base * 3.0)));
        println!("reduced on rank {}", fabric.global_rank());
        return;
    }
    // A 12 MiB /dev/shm (Docker's default is 64 MiB) in a mount namespace
    // of its own: too small for the shared window of 2 ranks, which would
    // end the ranks with SIGBUS; fabric must use Open MPI's all-reduce.
    let namespaces = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !namespaces {
        eprintln!("skipped: this machine does not allow `unshare -m` (needs root)");
        return;
    }
    let token = token();
    let scenario = this_test(test, &token);
    let inner = scenario.command();
    let mut command = Command::new("unshare");
    command.args([
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o size=12m tmpfs /dev/shm && exec \"$0\" \"$@\"",
    ]);
    command.arg(inner.get_program()).args(inner.get_args());
    command.envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let (output, text) = common::run(&mut command);
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("reduced on rank").count(), 2, "{text}");
    assert!(leftovers(&token).is_empty());
}

#[test]
fn complex_parameters_under_ddp_are_a_clear_error() {
    let test = "complex_parameters_under_ddp_are_a_clear_error";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        // A model with a complex parameter: rank 0's values cannot reach
        // the others through MPI, so setting it up is a clear error (and the
        // gradient buckets refuse complex gradients too).
        let mut vs = nn::VarStore::new(Device::Cpu);
        let _c = vs.root().add(
            "c",
            Tensor::ones([3], (Kind::ComplexFloat, Device::Cpu)),
            true,
        );
        let error = fabric
            .setup_module(&mut vs, nn::func(|x| x.shallow_clone()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("ComplexFloat"), "{error}");
        println!("refused on rank {}", fabric.global_rank());
        return;
    }
    let token = token();
    let (output, text) = run(this_test(test, &token));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("refused on rank").count(), 2, "{text}");
}

#[test]
fn a_torchrun_environment_drives_the_ranks() {
    let test = "a_torchrun_environment_drives_the_ranks";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .build_or_launch()
            .unwrap();
        let params = train_linear(&mut fabric, GLOBAL_BATCH / 2);
        print_params(&fabric, &params);
        return;
    }
    let token = token();
    let (output, text) = run(mpirun(&[torchrun(1, 2), torchrun(0, 2)], test, &token));
    assert!(output.status.success(), "{text}");
    let results = assert_matches_reference(&text, 2);
    assert!(results.values().all(|f| f["env"] == "torchrun"), "{text}");
}

#[test]
fn processes_that_share_no_mpi_world_get_a_clear_error() {
    let test = "processes_that_share_no_mpi_world_get_a_clear_error";
    if in_scenario(test) {
        let err = Fabric::builder()
            .accelerator("cpu")
            .build_or_launch()
            .unwrap_err()
            .to_string();
        println!("ERROR {err}");
        return;
    }
    let mut scenario = this_test(test, &token());
    for (name, value) in torchrun(0, 2) {
        scenario = scenario.env(name, value);
    }
    let (output, text) = run(scenario);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("reports 2 processes, but MPI connects 1"),
        "{text}"
    );
    assert!(text.contains("mpirun"), "{text}");
}

#[test]
fn the_environment_and_the_options_must_agree() {
    let test = "the_environment_and_the_options_must_agree";
    if in_scenario(test) {
        let err = Fabric::builder()
            .accelerator("cpu")
            .devices(3)
            .build_or_launch()
            .unwrap_err()
            .to_string();
        println!("DEVICES {err}");
        let err = Fabric::builder()
            .accelerator("cpu")
            .num_nodes(2)
            .build_or_launch()
            .unwrap_err()
            .to_string();
        println!("NODES {err}");
        let err = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp_spawn")
            .build_or_launch()
            .unwrap_err()
            .to_string();
        println!("SPAWN {err}");
        return;
    }
    let mut scenario = this_test(test, &token());
    for (name, value) in slurm(0, 0, 0, 2, "node01") {
        scenario = scenario.env(name, value);
    }
    let (output, text) = run(scenario);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(
            "DEVICES cluster environment SLURM: it reports 2 processes, but `devices = 3`"
        ),
        "{text}"
    );
    assert!(
        text.contains("NODES cluster environment SLURM: it reports 1 node(s), but `num_nodes = 2`"),
        "{text}"
    );
    assert!(
        text.contains("SPAWN cluster environment SLURM")
            && text.contains("use `strategy = \"ddp\"`"),
        "{text}"
    );
}

#[test]
fn several_nodes_need_a_cluster_launcher() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .devices(2)
        .num_nodes(2)
        .build_or_launch()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs the processes of every node started by a cluster launcher"),
        "{err}"
    );
}

#[test]
fn collectives_and_shards_are_correct() {
    let test = "collectives_and_shards_are_correct";
    if in_scenario(test) {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(3)
            .build_or_launch()
            .unwrap();
        let (rank, world) = (fabric.global_rank() as f64, fabric.world_size() as f64);
        let sum_of_ranks = world * (world - 1.0) / 2.0;
        for kind in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Int64] {
            // Odd sizes, a non-contiguous view, and an empty tensor.
            for shape in [vec![7i64], vec![3, 5], vec![0]] {
                let mine = (Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu))
                    * (rank + 1.0))
                    .to_kind(kind);
                for (op, expected) in [
                    (ReduceOp::Sum, sum_of_ranks + world),
                    (ReduceOp::Max, world),
                    (ReduceOp::Min, 1.0),
                    (ReduceOp::Mean, (sum_of_ranks + world) / world),
                ] {
                    let reduced = fabric.all_reduce(&mine, op).unwrap();
                    assert_eq!(reduced.size(), mine.size());
                    if op != ReduceOp::Mean {
                        assert_eq!(reduced.kind(), kind, "{op:?} keeps the dtype");
                    }
                    if mine.numel() > 0 {
                        let values: Vec<f64> =
                            Vec::try_from(reduced.to_kind(Kind::Double).view([-1])).unwrap();
                        assert!(
                            values.iter().all(|v| (v - expected).abs() < 1e-6),
                            "{kind:?} {op:?} {values:?}"
                        );
                    }
                }
                let transposed = if shape.len() == 2 {
                    mine.tr()
                } else {
                    mine.shallow_clone()
                };
                let reduced = fabric.all_reduce(&transposed, ReduceOp::Sum).unwrap();
                assert_eq!(
                    reduced.size(),
                    transposed.size(),
                    "non-contiguous input keeps its shape"
                );
                let from_one = fabric.broadcast(&mine, 1).unwrap();
                assert_eq!(from_one.size(), mine.size());
                if mine.numel() > 0 {
                    assert_eq!(
                        from_one.to_kind(Kind::Double).max().double_value(&[]),
                        2.0,
                        "rank 1's values"
                    );
                }
                let gathered = fabric.all_gather(&mine).unwrap();
                assert_eq!(gathered.size()[0], 3);
                if mine.numel() > 0 {
                    for r in 0..3 {
                        assert_eq!(
                            gathered
                                .get(r)
                                .to_kind(Kind::Double)
                                .mean(None)
                                .double_value(&[]),
                            r as f64 + 1.0
                        );
                    }
                }
            }
        }
        // Tensors of several 2 MiB chunks of the shared-memory all-reduce,
        // one after another (the chunks cycle through the slots), each
        // element distinct so that a part copied to the wrong place shows.
        let factor: f64 = (1..=3).map(f64::from).sum();
        for (numel, kind) in [
            (1_300_001i64, Kind::Float),
            (700_001, Kind::Double),
            (524_289, Kind::Float),
            (1_300_001, Kind::Int64),
            (3, Kind::Float),
        ] {
            let base = Tensor::arange(numel, (kind, Device::Cpu));
            let mine = &base * (rank + 1.0);
            let reduced = fabric
                .all_reduce(&mine.to_kind(kind), ReduceOp::Sum)
                .unwrap();
            let expected = (&base * factor).to_kind(kind);
            assert!(
                reduced.equal(&expected),
                "{numel} {kind:?}: the sum differs"
            );
        }
        // Shards of 10 samples over 3 ranks: padded to 12, 4 each, disjoint but for the padding.
        let n = 10;
        let dataset = TensorDataset::new(Tensor::arange(n, (Kind::Int64, Device::Cpu))).unwrap();
        let mut loader = fabric
            .setup_dataloaders(DataLoader::new(dataset).batch_size(100).shuffle(true))
            .unwrap();
        for epoch in 0..2 {
            let mine = loader.iter().next().unwrap().unwrap();
            assert_eq!(mine.size(), [4], "equal shard lengths");
            let all = fabric.all_gather(&mine).unwrap();
            let mut seen: Vec<i64> = Vec::try_from(all.view([-1])).unwrap();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(
                seen,
                (0..n).collect::<Vec<_>>(),
                "epoch {epoch}: the shards cover the data"
            );
            println!(
                "RESULT rank={} epoch={epoch} order={:?}",
                fabric.global_rank(),
                Vec::<i64>::try_from(&all.view([-1])).unwrap()
            );
        }
        fabric.barrier().unwrap();
        println!("RESULT rank={} ok=true", fabric.global_rank());
        return;
    }
    let (output, text) = run(this_test(test, &token()));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("ok=true").count(), 3, "{text}");
    let orders = |epoch: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(epoch))
            .map(|l| l.split("order=").nth(1).unwrap().to_owned())
            .collect()
    };
    let (epoch0, epoch1) = (orders("epoch=0"), orders("epoch=1"));
    assert_eq!(epoch0.len(), 3, "{text}");
    assert!(
        epoch0.windows(2).all(|w| w[0] == w[1]),
        "every rank sees the same epoch order"
    );
    assert_ne!(epoch0[0], epoch1[0], "each epoch reshuffles:\n{text}");
}

fn failing_run(test: &str, failure: &str) -> (Output, String, Duration, String) {
    failing_run_with(test, failure, &[])
}

fn failing_run_with(
    test: &str,
    failure: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Output, String, Duration, String) {
    let token = token();
    let start = Instant::now();
    let mut scenario = this_test(test, &token).env("FABRIC_FAILURE", failure);
    for (name, value) in env {
        scenario = scenario.env(name, value);
    }
    let (output, text) = run(scenario);
    (output, text, start.elapsed(), token)
}

/// The ranks of `fabric` train a linear model for `steps` steps (for ever
/// without), logging every step to its loggers; rank `failing` fails at
/// step `at` as `FABRIC_FAILURE` says.
fn failing_training(fabric: Fabric, failing: usize, at: u64, steps: Option<u64>, pause: Duration) {
    let mut fabric = fabric;
    let failure = std::env::var("FABRIC_FAILURE").unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(vs.root(), 8, 3, Default::default());
    let opt = nn::Sgd::default().build(&vs, 0.01).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let (x, y) = data();
    for step in 0..steps.unwrap_or(u64::MAX) {
        if fabric.global_rank() == failing && step == at {
            match failure.as_str() {
                // SAFETY: the test kills its own rank.
                "kill" => unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                },
                "panic" => panic!("rank {failing} gives up"),
                "hang" => std::thread::sleep(Duration::from_secs(3600)),
                _ => {}
            }
        }
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
        fabric
            .log_dict([("loss", loss.double_value(&[]))], Some(step))
            .unwrap();
        std::thread::sleep(pause);
    }
}

fn failure_scenario() {
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .devices(4)
        .build_or_launch()
        .unwrap();
    failing_training(fabric, 2, 3, None, Duration::from_millis(20));
}

#[test]
fn killing_one_of_four_ranks_ends_the_run_promptly_and_names_it() {
    let test = "killing_one_of_four_ranks_ends_the_run_promptly_and_names_it";
    if in_scenario(test) {
        return failure_scenario();
    }
    let (output, text, elapsed, token) = failing_run(test, "kill");
    assert!(!output.status.success(), "{text}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(text.contains("rank 2"), "the failed rank is named:\n{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        leftovers(&token),
        Vec::<String>::new(),
        "no process is left behind"
    );
}

#[test]
fn a_panicking_rank_ends_the_run_and_names_itself() {
    let test = "a_panicking_rank_ends_the_run_and_names_itself";
    if in_scenario(test) {
        return failure_scenario();
    }
    let (output, text, elapsed, token) = failing_run(test, "panic");
    assert!(!output.status.success(), "{text}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(
        text.contains("fabric: rank 2 failed: it panicked"),
        "{text}"
    );
    assert!(text.contains("rank 2 gives up"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leftovers(&token), Vec::<String>::new());
}

#[test]
fn a_rank_that_stops_taking_part_times_out_instead_of_hanging() {
    let test = "a_rank_that_stops_taking_part_times_out_instead_of_hanging";
    if in_scenario(test) {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .collective_timeout(Duration::from_secs(2))
            .build_or_launch()
            .unwrap();
        if fabric.global_rank() == 1 {
            std::thread::sleep(Duration::from_secs(3600));
        }
        fabric.barrier().unwrap();
        return;
    }
    let (output, text, elapsed, token) = failing_run(test, "none");
    assert!(!output.status.success(), "{text}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(
        text.contains("fabric: rank 0: `barrier` did not complete within 2s"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leftovers(&token), Vec::<String>::new());
}

#[test]
fn no_backward_sync_accumulates_locally_then_averages_everything() {
    let test = "no_backward_sync_accumulates_locally_then_averages_everything";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        fabric.seed_everything(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = nn::linear(vs.root(), 8, 3, Default::default());
        let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
        let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
        let rank = fabric.global_rank() as i64;
        let (x, y) = data();
        let (x1, y1) = (x.narrow(0, rank * 8, 4), y.narrow(0, rank * 8, 4));
        let (x2, y2) = (x.narrow(0, rank * 8 + 4, 4), y.narrow(0, rank * 8 + 4, 4));
        // This rank's own accumulated gradient, computed without fabric.
        let weight = vs
            .trainable_variables()
            .into_iter()
            .find(|t| t.size() == [3, 8])
            .unwrap();
        let local = {
            let w = weight.detach().copy().set_requires_grad(true);
            let bias = vs
                .trainable_variables()
                .into_iter()
                .find(|t| t.size() == [3])
                .unwrap()
                .detach();
            let loss = |x: &Tensor, y: &Tensor| {
                x.linear(&w, Some(&bias)).mse_loss(y, tch::Reduction::Mean)
            };
            (loss(&x1, &y1) + loss(&x2, &y2)).backward();
            w.grad()
        };
        opt.zero_grad();
        fabric
            .no_backward_sync(true, |f| {
                f.backward(&model.forward(&x1).mse_loss(&y1, tch::Reduction::Mean))
            })
            .unwrap();
        let unsynced = fabric.all_gather(&weight.grad()).unwrap();
        assert!(
            !unsynced
                .get(0)
                .allclose(&unsynced.get(1), 1e-6, 1e-6, false),
            "no averaging while accumulating"
        );
        fabric
            .backward(&model.forward(&x2).mse_loss(&y2, tch::Reduction::Mean))
            .unwrap();
        let expected = fabric.all_reduce(&local, ReduceOp::Mean).unwrap();
        assert!(
            weight.grad().allclose(&expected, 1e-5, 1e-6, false),
            "the synced gradient averages both micro-batches"
        );
        println!("RESULT rank={} ok=true", fabric.global_rank());
        return;
    }
    let (output, text) = run(this_test(test, &token()));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("ok=true").count(), 2, "{text}");
}

#[test]
fn early_stopping_on_one_rank_stops_every_rank() {
    use fabric::callbacks::EarlyStopping;
    use fabric::hooks::{Metrics, OnValidationEpochEnd};
    let test = "early_stopping_on_one_rank_stops_every_rank";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .callback(EarlyStopping::new("val_loss", 2))
            .build_or_launch()
            .unwrap();
        let rank = fabric.global_rank();
        let mut stopped_at = None;
        for epoch in 0..20 {
            // Rank 1's metric last improves at epoch 4 (patience 2: stop at 6); rank 0's never stops improving.
            let val_loss = if rank == 1 && epoch > 3 {
                1.0
            } else {
                10.0 - epoch as f64
            };
            fabric
                .call::<OnValidationEpochEnd>((epoch, &Metrics::from([("val_loss", val_loss)])))
                .unwrap();
            if fabric.should_stop().unwrap() {
                stopped_at = Some(epoch);
                break;
            }
        }
        println!("RESULT rank={rank} stopped={stopped_at:?}");
        return;
    }
    let (output, text) = run(this_test(test, &token()));
    assert!(output.status.success(), "{text}");
    let results = results(&text);
    assert_eq!(results.len(), 2, "{text}");
    assert_eq!(results[&0]["stopped"], "Some(6)", "{text}");
    assert_eq!(
        results[&1]["stopped"], "Some(6)",
        "every rank stops at the same epoch:\n{text}"
    );
}

#[fabric::fabric(accelerator = "cpu", strategy = "ddp_spawn", devices = 4)]
fn spawned_by_the_attribute(fabric: &mut Fabric) -> fabric::Result<(usize, usize, Vec<f32>)> {
    let params = train_linear(fabric, GLOBAL_BATCH / 4);
    Ok((fabric.global_rank(), fabric.world_size(), params))
}

#[test]
fn ddp_spawn_with_four_processes_via_the_attribute() {
    let test = "ddp_spawn_with_four_processes_via_the_attribute";
    if in_scenario(test) {
        let (rank, world, params) = spawned_by_the_attribute().unwrap();
        let close = params
            .iter()
            .zip(&reference())
            .all(|(a, b)| (a - b).abs() < 1e-5);
        println!("SPAWNED rank={rank} world={world} matches_reference={close}");
        return;
    }
    let token = token();
    let (output, text) = run(this_test(test, &token));
    assert!(output.status.success(), "{text}");
    let spawned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("SPAWNED rank="))
        .collect();
    assert_eq!(
        spawned.len(),
        1,
        "only the launching process continues:\n{text}"
    );
    assert!(
        spawned[0].contains("rank=0 world=4 matches_reference=true"),
        "{text}"
    );
    assert!(leftovers(&token).is_empty());
}

/// In each rank: gradients of a model with one parameter large enough to be
/// all-reduced from where it is (a bucket of its own) and small ones packed
/// together, in `precision`, are the mean of the ranks' local gradients.
fn averaging_scenario(precision: &str) {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .devices(2)
        .precision(precision)
        .build_or_launch()
        .unwrap();
    fabric.seed_everything(0);
    let mut vs = nn::VarStore::new(Device::Cpu);
    // 512 x 600 f32 weights: 1.2 MB, a bucket of their own.
    let net = nn::seq()
        .add(nn::linear(vs.root() / "big", 600, 512, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "small", 512, 3, Default::default()));
    let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let rank = fabric.global_rank();
    tch::manual_seed(100 + rank as i64);
    let x = Tensor::randn([4, 600], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    let loss = || model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    opt.zero_grad();
    fabric
        .no_backward_sync(true, |f| f.backward(&loss()))
        .unwrap();
    let local: Vec<Tensor> = variables.iter().map(|(_, v)| v.grad().copy()).collect();
    opt.zero_grad();
    fabric.backward(&loss()).unwrap();
    for ((name, variable), local) in variables.iter().zip(&local) {
        let expected = fabric.all_reduce(local, ReduceOp::Mean).unwrap();
        let averaged = variable.grad();
        assert_eq!(averaged.kind(), fabric.param_kind(), "{name}");
        assert!(
            averaged.to_kind(Kind::Float).allclose(
                &expected.to_kind(Kind::Float),
                1e-5,
                1e-6,
                false
            ),
            "{precision}: the gradient of {name} is the mean of the ranks' gradients"
        );
    }
    println!("RESULT rank={rank} ok=true");
}

#[test]
fn ddp_averages_large_and_small_gradients() {
    let test = "ddp_averages_large_and_small_gradients";
    if in_scenario(test) {
        return averaging_scenario("32-true");
    }
    let (output, text) = run(this_test(test, &token()));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("ok=true").count(), 2, "{text}");
}

#[test]
fn ddp_averages_bf16_gradients() {
    let test = "ddp_averages_bf16_gradients";
    if in_scenario(test) {
        return averaging_scenario("bf16-true");
    }
    let (output, text) = run(this_test(test, &token()));
    assert!(output.status.success(), "{text}");
    assert_eq!(text.matches("ok=true").count(), 2, "{text}");
}

/// The files in /dev/shm that this process maps (Open MPI's shared
/// memory: `osc_sm.*` for a shared window, `vader_segment.*` for its
/// shared-memory transport), as /proc/self/maps lists them.
fn shared_memory_mappings() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.find("/dev/shm/").map(|i| l[i..].replace(' ', "_")))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The Open MPI shared windows (`osc_sm.*` files) among `mappings`.
fn windows(mappings: &[String]) -> Vec<String> {
    mappings
        .iter()
        .filter(|m| m.contains("/dev/shm/osc_sm"))
        .cloned()
        .collect()
}

#[test]
fn dropping_a_fabric_frees_its_shared_window_and_a_new_one_joins_again() {
    let test = "dropping_a_fabric_frees_its_shared_window_and_a_new_one_joins_again";
    if in_scenario(test) {
        let before = shared_memory_mappings();
        let ones = Tensor::from_slice(&[1.0f32; 1000]);
        let first = Fabric::builder()
            .accelerator("cpu")
            .build_or_launch()
            .unwrap();
        // The first all-reduce opens the communicator's shared window.
        let sum = first.all_reduce(&ones, ReduceOp::Sum).unwrap();
        let first_window = windows(&shared_memory_mappings());
        // A second communicator keeps MPI alive while the first is dropped.
        let second = Fabric::builder()
            .accelerator("cpu")
            .build_or_launch()
            .unwrap();
        let second_sum = second.all_reduce(&ones, ReduceOp::Sum).unwrap();
        assert_eq!(second_sum.double_value(&[0]), 2.0);
        let rank = first.global_rank();
        drop(first);
        let first_dropped = windows(&shared_memory_mappings());
        drop(second);
        // The process still lives: every window must be unmapped now.
        let dropped = windows(&shared_memory_mappings());
        // MPI stays initialised: a new Fabric joins the same world again.
        let again = Fabric::builder()
            .accelerator("cpu")
            .build_or_launch()
            .unwrap()
            .all_reduce(&ones, ReduceOp::Sum)
            .unwrap()
            .double_value(&[0]);
        println!(
            "RESULT rank={rank} sum={} before={} first_window={} first_dropped={} dropped={} again={again}",
            sum.double_value(&[0]),
            before.join(","),
            first_window.join(","),
            first_dropped.join(","),
            dropped.join(","),
        );
        return;
    }
    let token = token();
    let (output, text) = run(mpirun(&[vec![], vec![]], test, &token));
    assert!(output.status.success(), "{text}");
    let results = results(&text);
    assert_eq!(results.len(), 2, "{text}");
    for fields in results.values() {
        assert_eq!(fields["sum"], "2", "{text}");
        let first_window = &fields["first_window"];
        assert!(
            first_window.contains("/dev/shm/osc_sm") && !first_window.contains(','),
            "the all-reduce went through one shared window:\n{text}"
        );
        let left = &fields["first_dropped"];
        assert!(
            left.contains("/dev/shm/osc_sm") && !left.contains(first_window.as_str()),
            "dropping the first Fabric freed its window, not the second's, while MPI lived on:\n{text}"
        );
        assert_eq!(
            fields["dropped"], "",
            "every window is unmapped once the last Fabric is dropped:\n{text}"
        );
        assert_eq!(
            fields["again"], "2",
            "a new Fabric joins the world again:\n{text}"
        );
    }
    assert!(leftovers(&token).is_empty());
}

#[test]
fn a_rank_whose_peer_hangs_ends_within_the_failure_timeout_when_dropping_its_fabric() {
    let test = "a_rank_whose_peer_hangs_ends_within_the_failure_timeout_when_dropping_its_fabric";
    if in_scenario(test) {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .failure_timeout(Duration::from_secs(2))
            .build_or_launch()
            .unwrap();
        // Opens the shared window, whose freeing waits for every rank.
        let sum = fabric
            .all_reduce(&Tensor::from_slice(&[1.0f32]), ReduceOp::Sum)
            .unwrap();
        assert_eq!(sum.double_value(&[0]), 2.0);
        if fabric.global_rank() == 1 {
            std::thread::sleep(Duration::from_secs(3600));
        }
        drop(fabric);
        println!("RESULT rank=0 dropped=true");
        return;
    }
    let (output, text, elapsed, token) = failing_run(test, "none");
    assert!(!output.status.success(), "{text}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(
        text.contains("fabric: rank 0: `freeing the MPI communicator` did not complete within 2s"),
        "{text}"
    );
    assert!(!text.contains("dropped=true"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leftovers(&token), Vec::<String>::new());
}

// ---- failures with loggers ------------------------------------------------

/// Two ranks, rank 0 logging every step to a CSV file under `FABRIC_RUNS`;
/// rank 1 fails at step 50 as `FABRIC_FAILURE` says.
fn logging_failure_scenario() {
    let root = std::env::var("FABRIC_RUNS").unwrap();
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .devices(2)
        .logger(fabric::CsvLogger::new(&root, "run"))
        .collective_timeout(Duration::from_secs(3))
        .build_or_launch()
        .unwrap();
    failing_training(fabric, 1, 50, Some(1000), Duration::ZERO);
}

/// The steps in `metrics.csv` of the run under `root`.
fn logged_steps(root: &std::path::Path) -> Vec<u64> {
    let file = root.join("run/version_0/metrics.csv");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = header
        .iter()
        .position(|c| *c == "step")
        .expect("a step column");
    lines
        .map(|l| l.split(',').nth(column).unwrap().parse().unwrap())
        .collect()
}

fn logging_failure(test: &str, failure: &str) {
    if in_scenario(test) {
        return logging_failure_scenario();
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, text, elapsed, token) =
        failing_run_with(test, failure, &[("FABRIC_RUNS", dir.path().as_os_str())]);
    assert!(!output.status.success(), "{text}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    // Rank 0 logged steps 0 to 49 before rank 1 failed: every row is there.
    let steps = logged_steps(dir.path());
    assert_eq!(steps, (0..50).collect::<Vec<_>>(), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(leftovers(&token).is_empty());
}

#[test]
fn a_panicking_rank_does_not_lose_rank_zeros_logged_rows() {
    logging_failure(
        "a_panicking_rank_does_not_lose_rank_zeros_logged_rows",
        "panic",
    );
}

#[test]
fn a_killed_rank_does_not_lose_rank_zeros_logged_rows() {
    logging_failure("a_killed_rank_does_not_lose_rank_zeros_logged_rows", "kill");
}

#[test]
fn a_rank_timing_out_on_a_hung_peer_does_not_lose_its_logged_rows() {
    logging_failure(
        "a_rank_timing_out_on_a_hung_peer_does_not_lose_its_logged_rows",
        "hang",
    );
}

#[test]
fn a_panic_the_user_catches_does_not_end_the_run() {
    let test = "a_panic_the_user_catches_does_not_end_the_run";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        let caught = std::panic::catch_unwind(|| panic!("a bad sample"));
        assert!(caught.is_err());
        let params = train_linear(&mut fabric, GLOBAL_BATCH / 2);
        print_params(&fabric, &params);
        return;
    }
    let token = token();
    let (output, text) = run(this_test(test, &token));
    assert!(output.status.success(), "{text}");
    assert_matches_reference(&text, 2);
}

#[test]
fn a_parameter_without_gradient_is_named_by_its_path_and_model() {
    let test = "a_parameter_without_gradient_is_named_by_its_path_and_model";
    if in_scenario(test) {
        let mut fabric = Fabric::builder()
            .accelerator("cpu")
            .strategy("ddp")
            .devices(2)
            .build_or_launch()
            .unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let used = nn::linear(vs.root() / "used", 8, 3, Default::default());
        let _unused = nn::linear(vs.root() / "unused", 8, 3, Default::default());
        let model = fabric.setup_module(&mut vs, used).unwrap();
        let (x, y) = data();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        let error = fabric.backward(&loss).unwrap_err();
        println!(
            "RESULT rank={} error={}",
            fabric.global_rank(),
            error.to_string().replace(' ', "_")
        );
        return;
    }
    let token = token();
    let (output, text) = run(this_test(test, &token));
    assert!(output.status.success(), "{text}");
    let results = results(&text);
    assert_eq!(results.len(), 2, "{text}");
    for fields in results.values() {
        let error = &fields["error"];
        assert!(error.contains("`unused.bias`_of_model_1"), "{text}");
    }
}
