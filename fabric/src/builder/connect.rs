//! The builder's resolution step: the options as given, the cluster
//! environment and this machine through the connector; then the `Fabric`
//! of a process that trains.

use std::time::Duration;

use fabric_options::Key;

use super::{DEFAULT_COLLECTIVE_TIMEOUT, DEFAULT_FAILURE_TIMEOUT, FabricBuilder};
use crate::callbacks::Callbacks;
use crate::connector::{self, Connection, Request};
use crate::environment::ClusterEnvironment;
use crate::error::Result;
use crate::fabric::{Fabric, Parts};
use crate::launcher;
use crate::loggers::Logger;
use crate::machine::ThisMachine;
use crate::overrides;
use crate::plugins::Plugin;
use crate::precision::{GradScaler, PrecisionPlugin};
use crate::preemption::{Preemption, PreemptionState};
use crate::process::ProcessSettings;
use crate::strategy::StrategyContext;
use crate::switches;

impl FabricBuilder {
    /// Parses and checks every option and resolves them against this
    /// machine and the cluster environment (the connector).
    ///
    /// The `LT_*` variables of Lightning's CLI override the values given
    /// here, as in Lightning: `LT_ACCELERATOR`, `LT_STRATEGY`, `LT_DEVICES`,
    /// `LT_NUM_NODES` and `LT_PRECISION`, parsed with the same messages.
    /// With `LT_CLI_USED=1`, a value given here that differs from its
    /// variable is an error.
    pub(super) fn connect(mut self) -> Result<(Connection, Assembly)> {
        if let Some(preemption) = &self.preemption {
            // Before any rank starts.
            preemption.check()?;
        }
        let given_strategy = self.options.get(Key::Strategy).cloned();
        let mut environment: Option<Box<dyn ClusterEnvironment>> = None;
        let mut precision_plugin: Option<Box<dyn PrecisionPlugin>> = None;
        let (mut cluster_environments, mut precision_plugins) = (0, 0);
        for plugin in self.plugins {
            match plugin {
                Plugin::ClusterEnvironment(env) => {
                    cluster_environments += 1;
                    environment = Some(env);
                }
                Plugin::Precision(plugin) => {
                    precision_plugins += 1;
                    precision_plugin = Some(plugin);
                }
            }
        }
        let options =
            overrides::resolve(&mut self.options, precision_plugins, cluster_environments)?;
        if self.options.get(Key::Strategy) != given_strategy.as_ref() {
            // LT_STRATEGY replaces the strategy, object included.
            self.strategy_object = None;
        }
        let environment = match environment {
            Some(environment) => Some(environment),
            None => crate::environment::detect()?,
        };
        #[cfg(feature = "testing")]
        let simulated_dp = self.simulated_dp;
        #[cfg(not(feature = "testing"))]
        let simulated_dp = None;
        let request = Request {
            options,
            num_nodes_given: self.options.get(Key::NumNodes).is_some(),
            strategy: self.strategy_object,
            precision: precision_plugin,
            environment,
            launched: launcher::was_launched(),
            spawn_worker: launcher::is_spawn_worker(),
            simulated_dp,
        };
        let load_cuda = self.load_cuda_backend.unwrap_or(true) && switches::load_cuda();
        let connection = connector::connect(request, &ThisMachine::new(load_cuda))?;
        if connection.environment.global_rank() == 0 {
            for warning in &connection.warnings {
                eprintln!("fabric: warning: {warning}");
            }
        }
        let assembly = Assembly {
            callbacks: self.callbacks,
            loggers: self.loggers,
            collective_timeout: self
                .collective_timeout
                .unwrap_or(DEFAULT_COLLECTIVE_TIMEOUT),
            failure_timeout: self.failure_timeout.unwrap_or(DEFAULT_FAILURE_TIMEOUT),
            progress_bar: self.progress_bar.unwrap_or(true),
            process: ProcessSettings {
                threads: self.intra_op_threads,
                keep_freed_memory: self.keep_freed_memory.unwrap_or(true),
            },
            preemption: self.preemption,
        };
        Ok((connection, assembly))
    }
}

/// What the builder adds to the connection to make a `Fabric`.
pub(super) struct Assembly {
    callbacks: Callbacks,
    loggers: Vec<Box<dyn Logger>>,
    collective_timeout: Duration,
    failure_timeout: Duration,
    progress_bar: bool,
    process: ProcessSettings,
    preemption: Option<Preemption>,
}

impl Assembly {
    /// The signals the process that starts the ranks passes on to them:
    /// the preemption signals, with the option.
    pub(super) fn forwarded_signals(&self) -> Vec<i32> {
        self.preemption
            .as_ref()
            .map(|p| p.caught_signals().to_vec())
            .unwrap_or_default()
    }
}

/// Makes the `Fabric` of a process that trains: applies the process
/// settings, installs a rank's failure handling, lets the strategy join the
/// run, and makes the device current.
pub(super) fn assemble(connection: Connection, assembly: Assembly) -> Result<Fabric> {
    let Connection {
        accelerator,
        devices,
        mut strategy,
        precision,
        environment,
        num_nodes: connection_nodes,
        shared_memory_room,
        ..
    } = connection;
    let world_size = environment.world_size();
    let num_nodes = connection_nodes.max(1);
    let device = devices[0];
    assembly
        .process
        .apply(device, world_size.div_ceil(num_nodes));
    if world_size > 1 {
        launcher::install_failure_handling(environment.global_rank(), assembly.failure_timeout);
    }
    let context = StrategyContext {
        devices,
        global_rank: environment.global_rank(),
        local_rank: environment.local_rank(),
        world_size,
        num_nodes,
        collective_timeout: assembly.collective_timeout,
        failure_timeout: assembly.failure_timeout,
        shared_memory_room,
    };
    strategy.setup_environment(&context)?;
    if let tch::Device::Cuda(index) = device {
        // As Lightning's `torch.cuda.set_device`: work that names no device
        // index goes to this process's GPU.
        crate::shim::cuda_set_device(index)?;
    }
    let scaler = match precision.loss_scaling() {
        Some(config) => Some(GradScaler::new(config, device)?),
        None => None,
    };
    // Installed last: only a process that trains catches the signals.
    let preemption = assembly.preemption.map(PreemptionState::new).transpose()?;
    Ok(Fabric::from_parts(Parts {
        accelerator,
        strategy,
        precision,
        scaler,
        environment,
        callbacks: assembly.callbacks,
        loggers: assembly.loggers,
        progress_bar: assembly.progress_bar,
        preemption,
    }))
}
