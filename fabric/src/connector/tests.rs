//! Every resolution rule of the connector, on machines described by facts
//! (`FakeMachine`): CUDA machines are tested on a machine without a GPU.

use std::cell::Cell;

use fabric_options::{Key, NumNodes, Precision, RawOptions, Value};
use tch::Device;

use super::{Connection, MAX_PROCESSES_PER_CORE, Plan, Request, connect};
use crate::accelerator::ResolvedAccelerator;
use crate::environment::ClusterEnvironment;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::strategy::{DdpStrategy, Strategy};

/// A machine described by its facts; counts the questions about CUDA.
struct FakeMachine {
    cuda: usize,
    mps: bool,
    nccl: bool,
    nccl_linkable: bool,
    cores: usize,
    shared_memory: Option<u64>,
    mpi: bool,
    cuda_questions: Cell<usize>,
}

impl FakeMachine {
    fn cpu(cores: usize) -> Self {
        FakeMachine {
            cuda: 0,
            mps: false,
            nccl: false,
            nccl_linkable: false,
            cores,
            shared_memory: Some(1 << 30),
            mpi: true,
            cuda_questions: Cell::new(0),
        }
    }

    fn gpus(cuda: usize) -> Self {
        FakeMachine {
            cuda,
            nccl: true,
            ..Self::cpu(16)
        }
    }
}

impl Machine for FakeMachine {
    fn cuda_device_count(&self) -> usize {
        self.cuda_questions.set(self.cuda_questions.get() + 1);
        self.cuda
    }
    fn cuda_unavailable_reason(&self) -> String {
        "no NVIDIA driver is installed (fake)".into()
    }
    fn has_mps(&self) -> bool {
        self.mps
    }
    fn nccl_loadable(&self) -> Result<()> {
        if self.nccl {
            Ok(())
        } else {
            Err(Error::Distributed("NCCL is not installed (fake)".into()))
        }
    }
    fn nccl_linkable(&self) -> bool {
        self.nccl_linkable
    }
    fn cores(&self) -> usize {
        self.cores
    }
    fn shared_memory_bytes(&self) -> Option<u64> {
        self.shared_memory
    }
    fn mpi_transport(&self) -> bool {
        self.mpi
    }
}

/// A cluster environment with the given ranks.
struct Cluster {
    world: usize,
    rank: usize,
    local: usize,
    nodes: Option<usize>,
}

impl ClusterEnvironment for Cluster {
    fn name(&self) -> &str {
        "test cluster"
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn global_rank(&self) -> usize {
        self.rank
    }
    fn local_rank(&self) -> usize {
        self.local
    }
    fn num_nodes(&self) -> Option<usize> {
        self.nodes
    }
}

fn cluster(world: usize, rank: usize, local: usize, nodes: Option<usize>) -> Box<Cluster> {
    Box::new(Cluster {
        world,
        rank,
        local,
        nodes,
    })
}

/// A request from option values as a user writes them.
fn request(accelerator: &str, strategy: &str, devices: impl Into<Value>) -> Request {
    let mut raw = RawOptions::default();
    raw.set(Key::Accelerator, accelerator);
    raw.set(Key::Strategy, strategy);
    raw.set(Key::Devices, devices);
    let (options, errors) = raw.parse();
    assert!(errors.is_empty(), "{errors:?}");
    Request {
        options,
        num_nodes_given: false,
        strategy: None,
        precision: None,
        environment: None,
        launched: false,
        spawn_worker: false,
        simulated_dp: None,
    }
}

fn ok(request: Request, machine: &FakeMachine) -> Connection {
    connect(request, machine).unwrap_or_else(|e| panic!("expected a connection: {e}"))
}

fn err(request: Request, machine: &FakeMachine) -> Error {
    match connect(request, machine) {
        Ok(connection) => panic!("expected an error, got {connection:?}"),
        Err(error) => error,
    }
}

// ---- one process ----------------------------------------------------------

#[test]
fn the_defaults_on_a_cpu_machine_are_one_process_on_the_cpu() {
    let c = ok(request("auto", "auto", "auto"), &FakeMachine::cpu(2));
    assert_eq!(c.accelerator, ResolvedAccelerator::Cpu);
    assert_eq!(c.devices, [Device::Cpu]);
    assert_eq!(c.strategy.name(), "single_device");
    assert_eq!(c.plan, Plan::Train);
    assert_eq!(c.precision.name(), "32-true");
}

#[test]
fn accelerator_cpu_never_asks_about_cuda() {
    let machine = FakeMachine::gpus(4);
    let c = ok(request("cpu", "auto", 1), &machine);
    assert_eq!(c.devices, [Device::Cpu]);
    assert_eq!(machine.cuda_questions.get(), 0);
}

#[test]
fn devices_zero_with_auto_means_the_cpu_even_on_a_cuda_machine() {
    let machine = FakeMachine::gpus(2);
    let c = ok(request("auto", "auto", 0), &machine);
    assert_eq!(c.accelerator, ResolvedAccelerator::Cpu);
    assert_eq!(machine.cuda_questions.get(), 0);
}

// ---- CUDA machines ----------------------------------------------------------

#[test]
fn auto_on_a_machine_with_four_gpus_starts_ddp_over_all_of_them() {
    let c = ok(request("auto", "auto", "auto"), &FakeMachine::gpus(4));
    assert_eq!(c.accelerator, ResolvedAccelerator::Cuda);
    assert_eq!(c.strategy.name(), "ddp");
    assert_eq!(
        c.plan,
        Plan::Start {
            processes: 4,
            spawn: false,
            cuda: true
        }
    );
}

#[test]
fn auto_on_one_gpu_is_a_single_device_run_on_it() {
    let c = ok(request("gpu", "auto", "auto"), &FakeMachine::gpus(1));
    assert_eq!(c.devices, [Device::Cuda(0)]);
    assert_eq!(c.strategy.name(), "single_device");
    assert_eq!(c.plan, Plan::Train);
}

#[test]
fn single_device_with_auto_devices_takes_the_first_gpu() {
    let c = ok(
        request("cuda", "single_device", "auto"),
        &FakeMachine::gpus(4),
    );
    assert_eq!(c.devices, [Device::Cuda(0)]);
    assert_eq!(c.plan, Plan::Train);
}

#[test]
fn device_indices_select_those_gpus() {
    let c = ok(request("cuda", "auto", vec![1usize]), &FakeMachine::gpus(2));
    assert_eq!(c.devices, [Device::Cuda(1)]);
    let e = err(request("cuda", "auto", 3), &FakeMachine::gpus(2));
    assert!(matches!(e, Error::DevicesUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("2 CUDA devices (0 to 1)"), "{e}");
}

#[test]
fn cuda_on_a_machine_without_gpus_says_why() {
    let e = err(request("cuda", "auto", 1), &FakeMachine::cpu(2));
    assert!(matches!(e, Error::AcceleratorUnavailable { .. }), "{e}");
    assert!(e.to_string().contains("no NVIDIA driver"), "{e}");
    assert!(e.to_string().contains("available: cpu"), "{e}");
}

#[test]
fn gpu_prefers_mps_where_there_is_mps() {
    let machine = FakeMachine {
        mps: true,
        ..FakeMachine::cpu(8)
    };
    let c = ok(request("gpu", "auto", 1), &machine);
    assert_eq!(c.accelerator, ResolvedAccelerator::Mps);
    assert_eq!(c.devices, [Device::Mps]);
}

#[test]
fn dp_spans_every_gpu_in_one_process() {
    let c = ok(request("cuda", "dp", "auto"), &FakeMachine::gpus(4));
    assert_eq!(c.strategy.name(), "dp");
    assert_eq!(c.devices, (0..4).map(Device::Cuda).collect::<Vec<_>>());
    assert_eq!(c.plan, Plan::Train);
}

#[test]
fn dp_on_the_cpu_names_ddp() {
    let e = err(request("auto", "dp", "auto"), &FakeMachine::cpu(4));
    assert!(e.to_string().contains("use `strategy = \"ddp\"`"), "{e}");
}

#[test]
fn a_one_task_cluster_job_keeps_auto_to_one_gpu_but_dp_to_all() {
    let machine = FakeMachine::gpus(4);
    let mut r = request("cuda", "auto", "auto");
    r.environment = Some(cluster(1, 0, 0, Some(1)));
    let c = ok(r, &machine);
    assert_eq!(c.devices, [Device::Cuda(0)]);
    assert_eq!(c.plan, Plan::Train);

    let mut r = request("cuda", "dp", "auto");
    r.environment = Some(cluster(1, 0, 0, Some(1)));
    assert_eq!(ok(r, &machine).devices.len(), 4);
}

#[test]
fn nccl_missing_is_an_error_before_any_rank_starts() {
    let machine = FakeMachine {
        nccl: false,
        ..FakeMachine::gpus(2)
    };
    let e = err(request("cuda", "ddp", 2), &machine);
    assert!(e.to_string().contains("NCCL"), "{e}");
    // Where the launcher can put a link to it on the ranks' library path,
    // the ranks it starts find it.
    let linkable = FakeMachine {
        nccl_linkable: true,
        ..machine
    };
    assert!(matches!(
        ok(request("cuda", "ddp", 2), &linkable).plan,
        Plan::Start { cuda: true, .. }
    ));
    // A rank that joins a world started by someone else needs it as it is.
    let mut r = request("cuda", "ddp", 2);
    r.environment = Some(cluster(2, 1, 1, Some(1)));
    let e = err(r, &linkable);
    assert!(e.to_string().contains("NCCL"), "{e}");
}

#[test]
fn a_rank_takes_its_local_ranks_gpu() {
    let mut r = request("cuda", "ddp", "auto");
    r.environment = Some(cluster(4, 3, 1, Some(2)));
    let c = ok(r, &FakeMachine::gpus(2));
    assert_eq!(c.devices, [Device::Cuda(1)]);
    assert_eq!(c.strategy.name(), "ddp");
    assert_eq!(c.plan, Plan::Train);
}

#[test]
fn several_processes_on_mps_are_an_error() {
    let machine = FakeMachine {
        mps: true,
        ..FakeMachine::cpu(8)
    };
    let mut r = request("mps", "ddp", 1);
    r.environment = Some(cluster(2, 0, 0, Some(2)));
    r.num_nodes_given = false;
    let e = err(r, &machine);
    assert!(e.to_string().contains("several processes on Mps"), "{e}");
}

// ---- processes ------------------------------------------------------------

#[test]
fn several_cpu_devices_start_ddp_ranks() {
    let c = ok(request("cpu", "auto", 2), &FakeMachine::cpu(2));
    assert_eq!(c.strategy.name(), "ddp");
    assert_eq!(
        c.plan,
        Plan::Start {
            processes: 2,
            spawn: false,
            cuda: false
        }
    );
    let c = ok(request("cpu", "ddp_spawn", 2), &FakeMachine::cpu(2));
    assert!(matches!(c.plan, Plan::Start { spawn: true, .. }));
}

#[test]
fn oversubscribing_cores_is_a_warning_and_far_too_many_processes_an_error() {
    let c = ok(request("cpu", "ddp", 4), &FakeMachine::cpu(2));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("4 processes on 2 core(s)"));
    assert!(
        ok(request("cpu", "ddp", 2), &FakeMachine::cpu(2))
            .warnings
            .is_empty()
    );

    let limit = 2 * MAX_PROCESSES_PER_CORE;
    assert!(connect(request("cpu", "ddp", limit), &FakeMachine::cpu(2)).is_ok());
    let e = err(request("cpu", "ddp", 100_000), &FakeMachine::cpu(2));
    assert!(
        matches!(e, Error::TooManyProcesses { requested: 100_000, limit: l, cores: 2 } if l == limit),
        "{e}"
    );
    assert!(e.to_string().contains("at most"), "{e}");
}

#[test]
fn a_rank_started_by_fabric_that_finds_itself_alone_does_not_launch_again() {
    let mut r = request("cpu", "ddp", 2);
    r.launched = true;
    let e = err(r, &FakeMachine::cpu(2));
    assert!(matches!(e, Error::Launch(_)), "{e}");
    assert!(e.to_string().contains("would start ranks again"), "{e}");
}

#[test]
fn several_nodes_need_a_cluster_launcher() {
    let mut r = request("cpu", "ddp", 2);
    r.options.num_nodes = NumNodes::parse(&Value::from(2)).unwrap();
    let e = err(r, &FakeMachine::cpu(2));
    assert!(e.to_string().contains("cluster launcher"), "{e}");
}

#[test]
fn a_single_device_strategy_with_several_devices_names_ddp() {
    let e = err(request("cpu", "single_device", 2), &FakeMachine::cpu(2));
    assert!(e.to_string().contains("use \"ddp\""), "{e}");
}

#[test]
fn a_strategy_object_is_resolved_by_its_process_model() {
    let mut r = request("cpu", "auto", 2);
    r.strategy = Some(Box::new(DdpStrategy::new().bucket_cap_mb(1.0)));
    let c = ok(r, &FakeMachine::cpu(2));
    assert!(matches!(c.plan, Plan::Start { processes: 2, .. }));

    let mut r = request("cpu", "auto", 1);
    r.strategy = Some(Box::new(DdpStrategy::spawn()) as Box<dyn Strategy>);
    let c = ok(r, &FakeMachine::cpu(2));
    assert_eq!(c.strategy.name(), "ddp_spawn");
    assert_eq!(c.plan, Plan::Train);
}

// ---- cluster environments ---------------------------------------------------

#[test]
fn a_cluster_environment_makes_this_process_a_rank() {
    let mut r = request("cpu", "auto", "auto");
    r.environment = Some(cluster(3, 2, 2, None));
    let c = ok(r, &FakeMachine::cpu(2));
    assert_eq!(c.strategy.name(), "ddp");
    assert_eq!(c.plan, Plan::Train);
    assert_eq!(c.environment.global_rank(), 2);
}

#[test]
fn the_environment_and_the_options_must_agree() {
    let mut r = request("cpu", "ddp", 3);
    r.environment = Some(cluster(2, 0, 0, None));
    let e = err(r, &FakeMachine::cpu(2));
    assert!(e.to_string().contains("set `devices = 2`"), "{e}");

    let mut r = request("cpu", "ddp", "auto");
    r.environment = Some(cluster(4, 0, 0, Some(2)));
    r.num_nodes_given = true;
    let e = err(r, &FakeMachine::cpu(2));
    assert!(e.to_string().contains("set `num_nodes = 2`"), "{e}");

    let mut r = request("cpu", "ddp_spawn", "auto");
    r.environment = Some(cluster(2, 0, 0, None));
    let e = err(r, &FakeMachine::cpu(2));
    assert!(
        e.to_string()
            .contains("`ddp_spawn` starts processes itself"),
        "{e}"
    );
    let mut r = request("cpu", "ddp_spawn", "auto");
    r.environment = Some(cluster(2, 0, 0, None));
    r.spawn_worker = true;
    assert_eq!(ok(r, &FakeMachine::cpu(2)).strategy.name(), "ddp_spawn");
}

#[test]
fn an_environment_with_zero_nodes_is_an_error_not_a_division_by_zero() {
    for given in [false, true] {
        let mut r = request("cpu", "ddp", "auto");
        r.environment = Some(cluster(2, 0, 0, Some(0)));
        r.num_nodes_given = given;
        let e = err(r, &FakeMachine::cpu(2));
        assert!(e.to_string().contains("reports 0 nodes"), "{e}");
        assert!(!e.to_string().contains("num_nodes = 0"), "{e}");
    }
}

#[test]
fn impossible_ranks_are_errors() {
    for (world, rank, local) in [(0, 0, 0), (2, 2, 0), (2, 0, 1)] {
        let mut r = request("cpu", "auto", "auto");
        r.environment = Some(cluster(world, rank, local, None));
        let e = err(r, &FakeMachine::cpu(2));
        assert!(matches!(e, Error::ClusterEnvironment { .. }), "{e}");
    }
}

// ---- precision --------------------------------------------------------------

#[test]
fn the_precision_is_checked_against_the_device() {
    let mut r = request("cuda", "auto", 1);
    r.options.precision = Some(Precision::Mixed16);
    let c = ok(r, &FakeMachine::gpus(1));
    assert_eq!(c.precision.name(), "16-mixed");
    assert!(c.precision.loss_scaling().is_some());

    let mut r = request("cpu", "auto", 1);
    r.options.precision = Some(Precision::Mixed16);
    assert!(connect(r, &FakeMachine::cpu(2)).is_err());
}

// The window is the MPI transport's.
#[cfg(feature = "mpi")]
#[test]
fn the_shared_window_needs_room_in_dev_shm() {
    let mut r = request("cpu", "ddp", "auto");
    r.environment = Some(cluster(4, 0, 0, None));
    assert!(ok(r, &FakeMachine::cpu(4)).shared_memory_room);
    // 32 MiB of /dev/shm is too small for 4 ranks' window (48 MiB).
    let small = FakeMachine {
        shared_memory: Some(32 << 20),
        ..FakeMachine::cpu(4)
    };
    let mut r = request("cpu", "ddp", "auto");
    r.environment = Some(cluster(4, 0, 0, None));
    assert!(!ok(r, &small).shared_memory_room);
    // Where it cannot be asked, the window is tried.
    let unknown = FakeMachine {
        shared_memory: None,
        ..FakeMachine::cpu(4)
    };
    let mut r = request("cpu", "ddp", "auto");
    r.environment = Some(cluster(4, 0, 0, None));
    assert!(ok(r, &unknown).shared_memory_room);
}

#[test]
fn find_unused_parameters_makes_a_ddp_that_finds_them() {
    let c = ok(
        request("cpu", "ddp_find_unused_parameters_true", 2),
        &FakeMachine::cpu(2),
    );
    let any = &*c.strategy as &dyn std::any::Any;
    let ddp = any
        .downcast_ref::<crate::strategy::DdpStrategy>()
        .expect("a ddp strategy");
    assert!(ddp.finds_unused_parameters());
    assert_eq!(c.strategy.name(), "ddp");
    let c = ok(request("cpu", "ddp", 2), &FakeMachine::cpu(2));
    let any = &*c.strategy as &dyn std::any::Any;
    let ddp = any.downcast_ref::<crate::strategy::DdpStrategy>().unwrap();
    assert!(!ddp.finds_unused_parameters());
}

// ---- a build without the `mpi` feature ------------------------------------

#[test]
fn without_the_mpi_feature_several_processes_are_an_error_naming_it() {
    let machine = FakeMachine {
        mpi: false,
        ..FakeMachine::cpu(4)
    };
    // fabric's own launcher, before it starts anything.
    let e = err(request("cpu", "ddp", 2), &machine);
    assert!(
        matches!(e, Error::FeatureDisabled { feature: "mpi", .. }),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(message.contains("\"ddp\" over 2 processes"), "{message}");
    assert!(message.contains("features = [\"mpi\"]"), "{message}");
    // A rank that a launcher started.
    let mut r = request("cpu", "ddp", "auto");
    r.environment = Some(cluster(4, 1, 1, None));
    let e = err(r, &machine);
    assert!(
        matches!(e, Error::FeatureDisabled { feature: "mpi", .. }),
        "{e:?}"
    );
    // CUDA ranks too: MPI starts NCCL's communicator. Said before the
    // missing NCCL, which would not be enough.
    let machine = FakeMachine {
        mpi: false,
        nccl: false,
        ..FakeMachine::gpus(2)
    };
    let e = err(request("cuda", "auto", 2), &machine);
    assert!(
        matches!(e, Error::FeatureDisabled { feature: "mpi", .. }),
        "{e:?}"
    );
    // A process count that is wrong in any build is said first.
    let machine_cpu = FakeMachine {
        mpi: false,
        ..FakeMachine::cpu(2)
    };
    let e = err(request("cpu", "ddp", 100_000), &machine_cpu);
    assert!(matches!(e, Error::TooManyProcesses { .. }), "{e:?}");
    // Several nodes: said before "use a cluster launcher", which would not
    // be enough either.
    let mut r = request("cpu", "ddp", 2);
    r.options.num_nodes = NumNodes::parse(&Value::from(2)).unwrap();
    let machine = FakeMachine {
        mpi: false,
        ..FakeMachine::cpu(4)
    };
    let e = err(r, &machine);
    assert!(
        matches!(e, Error::FeatureDisabled { feature: "mpi", .. }),
        "{e:?}"
    );
}

#[test]
fn without_the_mpi_feature_one_process_still_trains() {
    let machine = FakeMachine {
        mpi: false,
        ..FakeMachine::gpus(2)
    };
    let c = ok(request("cpu", "auto", 1), &machine);
    assert_eq!(c.plan, Plan::Train);
    let c = ok(request("cuda", "auto", 1), &machine);
    assert_eq!(c.strategy.name(), "single_device");
    // dp: several devices, one process, no MPI.
    let c = ok(request("cuda", "dp", 2), &machine);
    assert_eq!((c.strategy.name(), c.devices.len()), ("dp", 2));
}
