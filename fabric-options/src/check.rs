//! [`Options`]: the parsed configuration, and the combinations that can never work.

use crate::accelerator::Accelerator;
use crate::devices::Devices;
use crate::error::OptionError;
use crate::key::Key;
use crate::num_nodes::NumNodes;
use crate::precision::Precision;
use crate::strategy::{Strategy, StrategyParams};

/// A parsed configuration, as far as it can be known without the machine.
///
/// [`Options::set`] parses a value into its field (the schema maps each
/// [`Key`] to one), and [`RawOptions::parse`](crate::RawOptions::parse)
/// every value given.
///
/// [`Options::check`] rejects what cannot work anywhere, with the same
/// messages at compile time (in `#[fabric(...)]`) and at run time (in the
/// builder). What depends on the machine, such as whether CUDA is present, is
/// the runtime's business.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `accelerator`
    pub accelerator: Accelerator,
    /// `strategy`: its family.
    pub strategy: Strategy,
    /// What the strategy's name sets beyond its family, such as
    /// `find_unused_parameters` for `"ddp_find_unused_parameters_true"`
    /// (see [`StrategyName`](crate::StrategyName)).
    pub strategy_params: StrategyParams,
    /// `devices`
    pub devices: Devices,
    /// `num_nodes`
    pub num_nodes: NumNodes,
    /// `precision`, or `None` when not given (then `32-true`, or the
    /// precision plugin's).
    pub precision: Option<Precision>,
    /// How many precision plugins were passed in `plugins`.
    pub precision_plugins: usize,
    /// How many cluster environments were passed in `plugins`.
    pub cluster_environments: usize,
}

impl Options {
    /// The precision in effect: the one given, or `32-true`.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    /// Every combination error, in a stable order. Empty when the options
    /// can work on some machine.
    ///
    /// ```
    /// use fabric_options::{Accelerator, Key, Options, Strategy};
    ///
    /// let options = Options { accelerator: Accelerator::Cpu, strategy: Strategy::Dp, ..Options::default() };
    /// let errors = options.check();
    /// assert_eq!(errors[0].key(), Some(Key::Strategy));
    /// assert!(errors[0].message().contains("strategy = \"ddp\""));
    /// ```
    pub fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        let mut error = |key, message: String| errors.push(OptionError::new(key, message));
        let accelerator = self.accelerator;
        let strategy = self.strategy;

        if accelerator == Accelerator::Tpu {
            error(
                Key::Accelerator,
                "TPUs are driven through XLA, which does not exist in libtorch; use \"cuda\", \"cpu\" or \"auto\"".into(),
            );
        }
        match strategy {
            Strategy::Xla => error(
                Key::Strategy,
                "XLA strategies need TPUs and torch_xla, which do not exist in libtorch; use \"ddp\"".into(),
            ),
            Strategy::Fsdp | Strategy::DeepSpeed | Strategy::ModelParallel => error(
                Key::Strategy,
                format!(
                    "the sharded strategy \"{}\" is not available in fabric yet; use \"ddp\", which replicates the model on every device",
                    self.strategy_name()
                ),
            ),
            Strategy::DdpFork | Strategy::DdpNotebook => error(
                Key::Strategy,
                format!(
                    "\"{strategy}\" forks the running process, which is unsafe once libtorch has started its threads; use \"ddp\" or \"ddp_spawn\""
                ),
            ),
            Strategy::Dp if accelerator == Accelerator::Cpu => error(
                Key::Strategy,
                "\"dp\" splits each batch across the GPUs of one process and has no CPU implementation; use `strategy = \"ddp\"` to train with several CPU processes".into(),
            ),
            _ => {}
        }
        if accelerator == Accelerator::Mps
            && (strategy.is_multi_process() || strategy == Strategy::Dp)
        {
            error(
                Key::Strategy,
                format!(
                    "\"{strategy}\" is not supported with the MPS accelerator, which has a single device; use \"single_device\" or \"auto\""
                ),
            );
        }

        match self.precision {
            Some(Precision::Mixed16) if accelerator == Accelerator::Cpu => error(
                Key::Precision,
                "\"16-mixed\" needs a CUDA device: the CPU has no float16 autocast with loss scaling; use `precision = \"bf16-mixed\"`".into(),
            ),
            Some(p @ (Precision::TransformerEngine | Precision::TransformerEngineFloat16)) => error(
                Key::Precision,
                format!("\"{p}\" needs NVIDIA Transformer Engine, a Python library with no libtorch binding; use \"bf16-mixed\" or \"16-mixed\""),
            ),
            _ => {}
        }

        match &self.devices {
            Devices::Cpu if accelerator.is_gpu() => error(
                Key::Devices,
                format!(
                    "0 and None mean the CPU, but the accelerator is \"{accelerator}\"; give a number of devices such as 1, or use `accelerator = \"cpu\"`"
                ),
            ),
            Devices::Indices(_) | Devices::All if accelerator == Accelerator::Cpu => error(
                Key::Devices,
                format!(
                    "on the CPU `devices` is a number of processes, such as 1 or 2; {} selects device indices, which only GPUs have",
                    self.devices
                ),
            ),
            _ => {}
        }
        let several_devices = self.devices.count().is_some_and(|n| n > 1);
        if strategy == Strategy::SingleDevice && several_devices {
            error(
                Key::Strategy,
                format!(
                    "\"single_device\" runs on one device, but `devices` is {}; use `strategy = \"ddp\"` or `devices = 1`",
                    self.devices
                ),
            );
        }
        if matches!(strategy, Strategy::SingleDevice | Strategy::Dp) && self.num_nodes.get() > 1 {
            error(
                Key::NumNodes,
                format!(
                    "\"{strategy}\" runs one process, but `num_nodes` is {}; use `strategy = \"ddp\"`",
                    self.num_nodes.get()
                ),
            );
        }

        if self.precision.is_some() && self.precision_plugins > 0 {
            error(
                Key::Plugins,
                "both `precision` and a precision plugin were given; choose one".into(),
            );
        }
        if self.precision_plugins > 1 {
            error(
                Key::Plugins,
                format!(
                    "{} precision plugins were given; pass at most one",
                    self.precision_plugins
                ),
            );
        }
        if self.cluster_environments > 1 {
            error(
                Key::Plugins,
                format!(
                    "{} cluster environments were given; pass at most one",
                    self.cluster_environments
                ),
            );
        }
        errors
    }
}
