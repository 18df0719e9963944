//! [`FabricBuilder`]: the typed configuration a [`Fabric`] is built from.

use fabric_options::{
    Accelerator, Devices, NumNodes, OptionError, Options, Precision, Strategy, Value,
};

use crate::accelerator;
use crate::callbacks::{Callback, Callbacks};
use crate::environment::{ClusterEnvironment, SingleProcessEnvironment};
use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::loggers::Logger;
use crate::plugins::Plugin;
use crate::precision::{self, GradScaler, PrecisionPlugin};

/// Builds a [`Fabric`] from Lightning Fabric's constructor options.
///
/// Every value goes through the same parser as `#[fabric(...)]`, so it
/// accepts the same forms and gives the same messages; [`build`](Self::build)
/// reports every error at once.
///
/// ```
/// use fabric::Fabric;
///
/// let fabric = Fabric::builder()
///     .accelerator("cpu")
///     .devices(1)
///     .precision("64-true")
///     .build()
///     .unwrap();
/// assert_eq!(fabric.device(), tch::Device::Cpu);
///
/// let err = Fabric::builder().accelerator("cdua").precision("bf16-mixd").build().unwrap_err();
/// assert!(err.to_string().contains("did you mean `cuda`?"));
/// assert!(err.to_string().contains("did you mean `bf16-mixed`?"));
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct FabricBuilder {
    accelerator: Option<Value>,
    strategy: Option<Value>,
    devices: Option<Value>,
    num_nodes: Option<Value>,
    precision: Option<Value>,
    plugins: Vec<Plugin>,
    callbacks: Callbacks,
    loggers: Vec<Box<dyn Logger>>,
    progress_bar: Option<bool>,
}

impl std::fmt::Debug for FabricBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricBuilder")
            .field("accelerator", &self.accelerator)
            .field("strategy", &self.strategy)
            .field("devices", &self.devices)
            .field("num_nodes", &self.num_nodes)
            .field("precision", &self.precision)
            .field("plugins", &self.plugins)
            .field("callbacks", &self.callbacks.len())
            .field("loggers", &self.loggers.len())
            .field("progress_bar", &self.progress_bar)
            .finish()
    }
}

impl FabricBuilder {
    /// `accelerator`: `"cpu"`, `"cuda"`, `"gpu"`, `"mps"`, `"tpu"` or `"auto"` (the default).
    pub fn accelerator(mut self, value: impl Into<Value>) -> Self {
        self.accelerator = Some(value.into());
        self
    }

    /// `strategy`: `"auto"` (the default), `"single_device"`, `"ddp"`, ... .
    pub fn strategy(mut self, value: impl Into<Value>) -> Self {
        self.strategy = Some(value.into());
        self
    }

    /// `devices`: a count, a list of indices, `"1, 4"`, `-1` for all,
    /// `0`/`None` for the CPU, or `"auto"` (the default).
    pub fn devices(mut self, value: impl Into<Value>) -> Self {
        self.devices = Some(value.into());
        self
    }

    /// `num_nodes`: how many machines take part (1 by default).
    pub fn num_nodes(mut self, value: impl Into<Value>) -> Self {
        self.num_nodes = Some(value.into());
        self
    }

    /// `precision`: `"32-true"` (the default), `"64-true"`, `"bf16-mixed"`, ...
    /// or an alias such as `"bf16"` or `16`.
    pub fn precision(mut self, value: impl Into<Value>) -> Self {
        self.precision = Some(value.into());
        self
    }

    /// Adds a plugin, such as a [`ClusterEnvironment`].
    pub fn plugin(mut self, plugin: impl Into<Plugin>) -> Self {
        self.plugins.push(plugin.into());
        self
    }

    /// Registers a callback; callbacks keep their registration order.
    pub fn callback(mut self, callback: impl Callback) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Registers a logger.
    pub fn logger(mut self, logger: impl Logger) -> Self {
        self.loggers.push(Box::new(logger));
        self
    }

    /// Whether [`Fabric::progress`](crate::Fabric::progress) draws a bar
    /// (true: on rank 0, when the output is a terminal).
    pub fn progress_bar(mut self, enabled: bool) -> Self {
        self.progress_bar = Some(enabled);
        self
    }

    /// Parses and checks every option, resolves them against this machine
    /// and returns the `Fabric`, or every error found.
    pub fn build(self) -> Result<Fabric> {
        let mut errors = Vec::new();
        let accelerator = parse(&self.accelerator, Accelerator::parse, &mut errors);
        let strategy = parse(&self.strategy, Strategy::parse, &mut errors);
        let devices = parse(&self.devices, Devices::parse, &mut errors);
        let num_nodes = parse(&self.num_nodes, NumNodes::parse, &mut errors);
        let precision = match &self.precision {
            Some(value) => Precision::parse(value).map_err(|e| errors.push(e)).ok(),
            None => None,
        };
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
        let options = Options {
            accelerator,
            strategy,
            devices,
            num_nodes,
            precision,
            precision_plugins,
            cluster_environments,
        };
        errors.extend(options.check());
        if !errors.is_empty() {
            return Err(Error::from(errors));
        }

        let accelerator = accelerator::resolve(options.accelerator)?;
        let devices = accelerator::select_devices(accelerator, &options.devices)?;
        let precision = match precision_plugin {
            Some(plugin) => plugin,
            None => precision::from_option(options.precision())?,
        };
        precision.check_device(devices[0])?;
        if precision.autocast_dtype().is_some()
            && !matches!(devices[0], tch::Device::Cpu | tch::Device::Cuda(_))
        {
            return Err(Error::InvalidArgument(format!(
                "precision `{}` autocasts, which fabric runs on the CPU and CUDA devices, not on {:?}",
                precision.name(),
                devices[0]
            )));
        }
        let scaler = match precision.loss_scaling() {
            Some(config) => Some(GradScaler::new(config, devices[0])?),
            None => None,
        };
        let environment = environment.unwrap_or_else(|| Box::new(SingleProcessEnvironment));
        validate_environment(&*environment)?;
        let processes = devices.len() * options.num_nodes.get() as usize;
        let strategy = match options.strategy {
            Strategy::Auto | Strategy::SingleDevice
                if processes == 1 && environment.world_size() == 1 =>
            {
                Strategy::SingleDevice
            }
            Strategy::Auto | Strategy::SingleDevice => {
                return Err(Error::NotAvailableYet {
                    option: "strategy",
                    value: format!(
                        "\"ddp\" ({} process(es): {} device(s) on {} node(s), environment world size {})",
                        processes.max(environment.world_size()),
                        devices.len(),
                        options.num_nodes.get(),
                        environment.world_size()
                    ),
                    reason: "several devices or nodes need distributed training, which is not implemented yet; use `devices = 1`".into(),
                });
            }
            other => {
                return Err(Error::NotAvailableYet {
                    option: "strategy",
                    value: format!("\"{other}\""),
                    reason: "distributed strategies are not implemented yet; use \"auto\" or \"single_device\" with one device".into(),
                });
            }
        };
        let fabric = Fabric::new_resolved(
            accelerator,
            devices[0],
            strategy,
            precision,
            scaler,
            environment,
            self.callbacks,
            self.loggers,
        );
        Ok(fabric.with_progress_bar(self.progress_bar.unwrap_or(true)))
    }
}

fn parse<T: Default>(
    value: &Option<Value>,
    parser: fn(&Value) -> Result<T, OptionError>,
    errors: &mut Vec<OptionError>,
) -> T {
    match value {
        Some(value) => parser(value).unwrap_or_else(|e| {
            errors.push(e);
            T::default()
        }),
        None => T::default(),
    }
}

/// Rejects ranks that cannot belong to the world the environment reports.
fn validate_environment(env: &dyn ClusterEnvironment) -> Result<()> {
    let error = |message: String| Error::ClusterEnvironment {
        environment: env.name().to_owned(),
        message,
    };
    let world = env.world_size();
    if world == 0 {
        return Err(error(
            "world size is 0; a run has at least one process".into(),
        ));
    }
    if env.global_rank() >= world {
        return Err(error(format!(
            "global rank {} is not below the world size {world}",
            env.global_rank()
        )));
    }
    if env.local_rank() > env.global_rank() {
        return Err(error(format!(
            "local rank {} is above the global rank {}",
            env.local_rank(),
            env.global_rank()
        )));
    }
    Ok(())
}
