//! Building a `Fabric` from options: every form accepted, every error clear.

use fabric::{Error, Fabric, Precision};
use tch::Device;

fn cuda() -> bool {
    tch::Cuda::is_available()
}

#[test]
fn auto_resolves_to_the_cpu_without_cuda() {
    let fabric = Fabric::new().unwrap();
    if cuda() {
        assert_eq!(fabric.device(), Device::Cuda(0));
        assert_eq!(fabric.accelerator(), "cuda");
    } else {
        assert_eq!(fabric.device(), Device::Cpu);
        assert_eq!(fabric.accelerator(), "cpu");
    }
    assert_eq!(fabric.strategy().name(), "single_device");
    assert_eq!(fabric.precision(), Some(Precision::True32));
    assert_eq!(
        (
            fabric.global_rank(),
            fabric.local_rank(),
            fabric.node_rank(),
            fabric.world_size()
        ),
        (0, 0, 0, 1)
    );
    assert!(fabric.is_global_zero());
}

#[test]
fn gpu_without_cuda_lists_what_is_available() {
    if cuda() {
        return; // this machine has CUDA: nothing to report
    }
    for name in ["gpu", "cuda"] {
        let err = Fabric::builder().accelerator(name).build().unwrap_err();
        assert!(
            matches!(err, Error::AcceleratorUnavailable { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("accelerator \"{name}\" is not available")),
            "{message}"
        );
        assert!(message.contains("available: cpu"), "{message}");
    }
}

#[test]
fn mps_and_tpu_say_why_they_are_unavailable() {
    if !tch::utils::has_mps() {
        let err = Fabric::builder()
            .accelerator("mps")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("Apple silicon"), "{err}");
        assert!(err.contains("available: cpu"), "{err}");
    }
    let err = Fabric::builder()
        .accelerator("tpu")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("XLA, which does not exist in libtorch"),
        "{err}"
    );
}

#[test]
fn cpu_device_forms_of_the_seed_build() {
    let forms: Vec<fabric::options::Value> = vec![
        None::<i64>.into(),
        0.into(),
        "0".into(),
        1.into(),
        "1".into(),
        "auto".into(),
    ];
    for devices in forms {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .devices(devices.clone())
            .build();
        assert_eq!(
            fabric.map(|f| f.device()).ok(),
            Some(Device::Cpu),
            "devices = {devices}"
        );
    }
}

#[test]
fn bad_devices_are_errors_that_say_what_is_accepted() {
    let cases: [(fabric::options::Value, &str); 4] = [
        ("1, x".into(), "`x`, which is not a device index"),
        ((-2).into(), "-2 is below -1"),
        ([1, 1].into(), "lists device 1 more than once"),
        (Vec::<i64>::new().into(), "selects no device"),
    ];
    for (devices, expected) in cases {
        let err = Fabric::builder()
            .devices(devices.clone())
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "devices = {devices}: {err}");
        assert!(err.contains("accepted:"), "devices = {devices}: {err}");
    }
}

#[test]
fn gpu_indices_beyond_the_machine_list_what_is_present() {
    if cuda() {
        let n = tch::Cuda::device_count();
        let err = Fabric::builder()
            .accelerator("cuda")
            .devices([n])
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("present:"), "{err}");
        return;
    }
    // On the CPU, device indices do not exist at all.
    let err = Fabric::builder()
        .accelerator("cpu")
        .devices([1, 4])
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("number of processes"), "{err}");
}

#[test]
fn every_error_is_reported_at_once_with_suggestions() {
    let err = Fabric::builder()
        .accelerator("cdua")
        .strategy("dpp")
        .precision("bf16-mixd")
        .num_nodes(0)
        .build()
        .unwrap_err();
    let Error::Options(errors) = &err else {
        panic!("expected several errors, got {err:?}")
    };
    assert_eq!(errors.len(), 4, "{err}");
    let message = err.to_string();
    assert!(message.contains("did you mean `cuda`?"), "{message}");
    assert!(message.contains("did you mean `bf16-mixed`?"), "{message}");
    assert!(message.contains("invalid `num_nodes`"), "{message}");
}

#[test]
fn impossible_combinations_suggest_the_fix() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .strategy("dp")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("use `strategy = \"ddp\"`"), "{err}");
    let err = Fabric::builder()
        .accelerator("cpu")
        .precision("16-mixed")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("use `precision = \"bf16-mixed\"`"), "{err}");
    let err = Fabric::builder()
        .accelerator("cuda")
        .devices(0)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 and None mean the CPU"), "{err}");
}

#[test]
fn one_device_ddp_builds_and_foreign_precisions_are_option_errors() {
    // `ddp` on one device is one process: it builds.
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .build()
        .unwrap();
    assert_eq!(fabric.world_size(), 1);
    let err = Fabric::builder()
        .accelerator("cpu")
        .precision("transformer-engine")
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Option(_)),
        "rejected by the shared check: {err:?}"
    );
}

#[test]
fn precision_aliases_reach_the_runtime() {
    let cases: [(fabric::options::Value, Precision); 5] = [
        ("64".into(), Precision::True64),
        (64.into(), Precision::True64),
        ("32".into(), Precision::True32),
        ("bf16-true".into(), Precision::TrueBf16),
        ("16-true".into(), Precision::True16),
    ];
    for (value, expected) in cases {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .precision(value.clone())
            .build()
            .unwrap();
        assert_eq!(fabric.precision(), Some(expected), "precision = {value}");
    }
}

struct StaticCluster {
    world: usize,
    rank: usize,
}

impl fabric::ClusterEnvironment for StaticCluster {
    fn world_size(&self) -> usize {
        self.world
    }
    fn global_rank(&self) -> usize {
        self.rank
    }
}

#[test]
fn a_users_cluster_environment_provides_the_ranks() {
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .plugin(StaticCluster { world: 1, rank: 0 })
        .build()
        .unwrap();
    assert_eq!(fabric.environment_name(), "StaticCluster");
    assert_eq!(fabric.world_size(), 1);

    let err = Fabric::builder()
        .accelerator("cpu")
        .plugin(StaticCluster { world: 2, rank: 1 })
        .build()
        .unwrap_err();
    if fabric::testing::MPI_TRANSPORT {
        // A world of 2 whose processes share no MPI world cannot run.
        assert!(matches!(err, Error::Distributed(_)), "{err:?}");
        assert!(err.to_string().contains("MPI connects 1"), "{err}");
    } else {
        assert!(
            matches!(err, Error::FeatureDisabled { feature: "mpi", .. }),
            "{err:?}"
        );
    }

    let err = Fabric::builder()
        .accelerator("cpu")
        .plugin(StaticCluster { world: 1, rank: 0 })
        .plugin(StaticCluster { world: 1, rank: 0 })
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 cluster environments were given; pass at most one"),
        "{err}"
    );
}

#[test]
fn inconsistent_ranks_from_an_environment_are_rejected() {
    // World size 0 is never valid, whatever the strategy.
    let err = Fabric::builder()
        .accelerator("cpu")
        .plugin(StaticCluster { world: 0, rank: 0 })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("world size is 0"), "{err}");
    let err = Fabric::builder()
        .accelerator("cpu")
        .plugin(StaticCluster { world: 2, rank: 5 })
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("global rank 5 is not below the world size 2"),
        "{err}"
    );
}

#[test]
fn zero_or_none_devices_with_auto_mean_the_cpu_even_where_cuda_is() {
    for devices in [fabric::options::Value::None, 0.into(), "0".into()] {
        let fabric = Fabric::builder().devices(devices.clone()).build().unwrap();
        assert_eq!(fabric.device(), Device::Cpu, "devices = {devices}");
        assert_eq!(fabric.accelerator(), "cpu");
    }
}

/// A cluster environment that says it has no nodes.
struct NoNodes;

impl fabric::ClusterEnvironment for NoNodes {
    fn world_size(&self) -> usize {
        2
    }
    fn global_rank(&self) -> usize {
        0
    }
    fn num_nodes(&self) -> Option<usize> {
        Some(0)
    }
}

#[test]
fn an_environment_reporting_zero_nodes_is_an_error_not_a_panic() {
    for num_nodes in [None, Some(1)] {
        let mut builder = Fabric::builder().accelerator("cpu").plugin(NoNodes);
        if let Some(n) = num_nodes {
            builder = builder.num_nodes(n);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.build()));
        let err = outcome.expect("no panic").unwrap_err();
        assert!(matches!(err, Error::ClusterEnvironment { .. }), "{err:?}");
        assert!(err.to_string().contains("reports 0 nodes"), "{err}");
        // The fix it suggests is one the parser accepts.
        assert!(!err.to_string().contains("num_nodes = 0"), "{err}");
    }
}

#[test]
fn far_more_devices_than_the_launcher_can_start_is_an_error() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .devices(100_000)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyProcesses {
                requested: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn build_never_starts_processes_and_names_the_launch_step() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .strategy("ddp")
        .devices(2)
        .build()
        .unwrap_err();
    if fabric::testing::MPI_TRANSPORT {
        assert!(matches!(err, Error::Launch(_)), "{err:?}");
        assert!(err.to_string().contains("build_or_launch"), "{err}");
    } else {
        // Without the MPI transport no ranks could start: said first.
        assert!(
            matches!(err, Error::FeatureDisabled { feature: "mpi", .. }),
            "{err:?}"
        );
    }
}

/// A strategy of the user's that happens to take a name fabric reserves.
struct MyFsdp(fabric::strategy::DdpStrategy);

impl fabric::Strategy for MyFsdp {
    fn name(&self) -> &str {
        "fsdp"
    }
    fn process_model(&self) -> fabric::strategy::ProcessModel {
        self.0.process_model()
    }
    fn setup_environment(
        &mut self,
        context: &fabric::strategy::StrategyContext,
    ) -> fabric::Result<()> {
        self.0.setup_environment(context)
    }
    fn root_device(&self) -> tch::Device {
        self.0.root_device()
    }
    fn global_rank(&self) -> usize {
        self.0.global_rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn setup_module(&mut self, vs: &mut tch::nn::VarStore) -> fabric::Result<()> {
        self.0.setup_module(vs)
    }
    fn backward(&mut self, loss: &tch::Tensor) -> fabric::Result<()> {
        self.0.backward(loss)
    }
    fn set_backward_sync(&mut self, enabled: bool) -> bool {
        self.0.set_backward_sync(enabled)
    }
    fn all_reduce(&self, t: &tch::Tensor, op: fabric::ReduceOp) -> fabric::Result<tch::Tensor> {
        self.0.all_reduce(t, op)
    }
    fn broadcast(&self, t: &tch::Tensor, src: usize) -> fabric::Result<tch::Tensor> {
        self.0.broadcast(t, src)
    }
    fn all_gather(&self, t: &tch::Tensor) -> fabric::Result<tch::Tensor> {
        self.0.all_gather(t)
    }
    fn barrier(&self) -> fabric::Result<()> {
        self.0.barrier()
    }
}

#[test]
fn a_users_strategy_is_resolved_by_its_process_model_whatever_its_name() {
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy(MyFsdp(fabric::strategy::DdpStrategy::new()))
        .build()
        .unwrap();
    assert_eq!(fabric.strategy().name(), "fsdp");
    // Fabric's own strategies keep the option checks.
    let err = Fabric::builder()
        .accelerator("cpu")
        .strategy(fabric::strategy::DataParallelStrategy::new())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("\"dp\""), "{err}");
}
