//! The `strategy` option: the families ([`Strategy`]) and the names Lightning
//! registers for them ([`StrategyName`]), with what each name sets
//! ([`StrategyParams`]).

use std::fmt;

use crate::error::OptionError;
use crate::key::Key;
use crate::value::Value;

/// How training is spread over devices: the strategy families of Lightning
/// Fabric.
///
/// Several registered names can mean one family with different parameters
/// (`"deepspeed_stage_3_offload"` is [`Strategy::DeepSpeed`] at ZeRO stage 3
/// with offloading): [`StrategyName`] parses a name into its family and its
/// [`StrategyParams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// One device, or `ddp` when several devices or nodes are given (`"auto"`).
    #[default]
    Auto,
    /// One process on one device (`"single_device"`).
    SingleDevice,
    /// One process driving several GPUs, batch split between them (`"dp"`).
    Dp,
    /// One process per device, gradients averaged (`"ddp"`,
    /// `"ddp_find_unused_parameters_true"`).
    Ddp,
    /// Like `ddp`, with fabric starting the worker processes (`"ddp_spawn"`).
    DdpSpawn,
    /// `ddp` by forking the current process (`"ddp_fork"`).
    DdpFork,
    /// `ddp_fork` for notebooks (`"ddp_notebook"`).
    DdpNotebook,
    /// Fully sharded data parallel (`"fsdp"`, `"fsdp_cpu_offload"`).
    Fsdp,
    /// Microsoft DeepSpeed (`"deepspeed"` and its `deepspeed_stage_*` names).
    DeepSpeed,
    /// Tensor and model parallelism: Lightning's `ModelParallelStrategy`,
    /// which Lightning 2.6 registers under no name, so no string parses to
    /// it; it is reached through the class name (see
    /// [`Strategy::from_class_name`]).
    ModelParallel,
    /// XLA (TPU) strategies (`"xla"`, `"xla_fsdp"`, `"single_xla"`).
    Xla,
}

/// Where a strategy offloads state to, as Lightning's registered names say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offload {
    /// Host memory (`..._offload`, `fsdp_cpu_offload`).
    Cpu,
    /// NVMe storage (`deepspeed_stage_3_offload_nvme`).
    Nvme,
}

/// What a registered name sets beyond its family: the arguments Lightning's
/// registry passes to the strategy's constructor. The default (every field
/// unset) is the family's plain name (`"ddp"`, `"deepspeed"`, `"fsdp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StrategyParams {
    /// `find_unused_parameters=True` (`"ddp_find_unused_parameters_true"`).
    pub find_unused_parameters: bool,
    /// DeepSpeed's ZeRO stage (`"deepspeed_stage_2"`: 2); `None` for
    /// `"deepspeed"`, which keeps `DeepSpeedStrategy`'s own default.
    pub zero_stage: Option<u8>,
    /// Where the optimizer state is offloaded (`offload_optimizer=True`).
    pub offload_optimizer: Option<Offload>,
    /// Where the parameters are offloaded (DeepSpeed's
    /// `offload_parameters=True`, FSDP's `cpu_offload=True`).
    pub offload_parameters: Option<Offload>,
}

/// A strategy name, parsed: its family and the parameters the name sets.
///
/// The names are those Lightning Fabric 2.6 registers
/// (`lightning.fabric.strategies`' `register_strategies`), plus two that
/// its registry does not hold:
///
/// - `"auto"`, which Lightning's connector takes before the registry;
/// - `"single_device"`, the strategy `"auto"` picks for one device:
///   Lightning's `Trainer` registers it, Fabric's registry does not, and
///   fabric accepts it so that one device can be asked for by name.
///
/// `"model_parallel"` is not a name: Lightning 2.6 registers
/// `ModelParallelStrategy` under none (see [`Strategy::ModelParallel`]).
///
/// ```
/// use fabric_options::{Offload, Strategy, StrategyName, Value};
///
/// let name = StrategyName::parse(&Value::from("deepspeed_stage_3_offload")).unwrap();
/// assert_eq!(name.strategy(), Strategy::DeepSpeed);
/// assert_eq!(name.params().zero_stage, Some(3));
/// assert_eq!(name.params().offload_parameters, Some(Offload::Cpu));
///
/// let ddp = StrategyName::parse(&Value::from("ddp_find_unused_parameters_true")).unwrap();
/// assert_eq!(ddp.strategy(), Strategy::Ddp);
/// assert!(ddp.params().find_unused_parameters);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StrategyName {
    name: &'static str,
    strategy: Strategy,
    params: StrategyParams,
}

const NONE: StrategyParams = StrategyParams {
    find_unused_parameters: false,
    zero_stage: None,
    offload_optimizer: None,
    offload_parameters: None,
};

const fn plain(name: &'static str, strategy: Strategy) -> StrategyName {
    StrategyName {
        name,
        strategy,
        params: NONE,
    }
}

const fn deepspeed(
    name: &'static str,
    stage: u8,
    offload_optimizer: Option<Offload>,
    offload_parameters: Option<Offload>,
) -> StrategyName {
    StrategyName {
        name,
        strategy: Strategy::DeepSpeed,
        params: StrategyParams {
            zero_stage: Some(stage),
            offload_optimizer,
            offload_parameters,
            ..NONE
        },
    }
}

/// Every accepted name, in the order of Lightning's registrations (the
/// first name of a family, with no parameters, is its canonical name).
const NAMES: [StrategyName; 21] = [
    plain("auto", Strategy::Auto),
    plain("single_device", Strategy::SingleDevice),
    plain("dp", Strategy::Dp),
    plain("ddp", Strategy::Ddp),
    plain("ddp_spawn", Strategy::DdpSpawn),
    plain("ddp_fork", Strategy::DdpFork),
    plain("ddp_notebook", Strategy::DdpNotebook),
    StrategyName {
        name: "ddp_find_unused_parameters_true",
        strategy: Strategy::Ddp,
        params: StrategyParams {
            find_unused_parameters: true,
            ..NONE
        },
    },
    plain("fsdp", Strategy::Fsdp),
    StrategyName {
        name: "fsdp_cpu_offload",
        strategy: Strategy::Fsdp,
        params: StrategyParams {
            offload_parameters: Some(Offload::Cpu),
            ..NONE
        },
    },
    plain("deepspeed", Strategy::DeepSpeed),
    deepspeed("deepspeed_stage_1", 1, None, None),
    deepspeed("deepspeed_stage_1_offload", 1, Some(Offload::Cpu), None),
    deepspeed("deepspeed_stage_2", 2, None, None),
    deepspeed("deepspeed_stage_2_offload", 2, Some(Offload::Cpu), None),
    deepspeed("deepspeed_stage_3", 3, None, None),
    deepspeed(
        "deepspeed_stage_3_offload",
        3,
        Some(Offload::Cpu),
        Some(Offload::Cpu),
    ),
    deepspeed(
        "deepspeed_stage_3_offload_nvme",
        3,
        Some(Offload::Nvme),
        Some(Offload::Nvme),
    ),
    // The three XLA names are one family with no parameter fabric models
    // (XLA does not exist in libtorch): they all read back as "xla".
    plain("xla", Strategy::Xla),
    plain("xla_fsdp", Strategy::Xla),
    plain("single_xla", Strategy::Xla),
];

/// Lightning's strategy classes, which its docs pass as objects
/// (`strategy=DeepSpeedStrategy(stage=2)`), and the strategy each one is.
const CLASSES: [(&str, Strategy); 9] = [
    ("SingleDeviceStrategy", Strategy::SingleDevice),
    ("DataParallelStrategy", Strategy::Dp),
    ("DDPStrategy", Strategy::Ddp),
    ("FSDPStrategy", Strategy::Fsdp),
    ("DeepSpeedStrategy", Strategy::DeepSpeed),
    ("ModelParallelStrategy", Strategy::ModelParallel),
    ("XLAStrategy", Strategy::Xla),
    ("XLAFSDPStrategy", Strategy::Xla),
    ("SingleDeviceXLAStrategy", Strategy::Xla),
];

impl StrategyName {
    /// Every accepted name, parsed.
    pub fn all() -> impl Iterator<Item = StrategyName> {
        NAMES.into_iter()
    }

    /// Parses a name (case-insensitive, as Lightning does); an unknown one
    /// gets the accepted list and a suggestion for a misspelt one.
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        let Value::Str(name) = value else {
            return Err(OptionError::wrong_type(
                Key::Strategy,
                value,
                "a string such as \"ddp\"",
            ));
        };
        let lower = name.trim().to_lowercase();
        NAMES.into_iter().find(|n| n.name == lower).ok_or_else(|| {
            let names: Vec<_> = Strategy::names().collect();
            OptionError::invalid_name(Key::Strategy, value, "strategy", &names)
        })
    }

    /// The name registered for `strategy` with `params`, if there is one
    /// (the first one for the XLA family, whose names share both).
    pub fn from_parts(strategy: Strategy, params: StrategyParams) -> Option<StrategyName> {
        NAMES
            .into_iter()
            .find(|n| n.strategy == strategy && n.params == params)
    }

    /// The name, lower-case, as Lightning registers it.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// The family.
    pub fn strategy(self) -> Strategy {
        self.strategy
    }

    /// What the name sets beyond its family.
    pub fn params(self) -> StrategyParams {
        self.params
    }
}

impl fmt::Display for StrategyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl From<StrategyName> for Value {
    fn from(value: StrategyName) -> Self {
        Value::Str(value.name.to_owned())
    }
}

impl Strategy {
    /// The strategy a Lightning strategy class implements, such as
    /// [`Strategy::DeepSpeed`] for `DeepSpeedStrategy`, so that an error
    /// about `strategy=DeepSpeedStrategy(stage=2)` can say what is wrong with
    /// DeepSpeed rather than with the syntax.
    ///
    /// ```
    /// use fabric_options::Strategy;
    ///
    /// assert_eq!(Strategy::from_class_name("DeepSpeedStrategy"), Some(Strategy::DeepSpeed));
    /// assert_eq!(Strategy::from_class_name("MyStrategy"), None);
    /// ```
    pub fn from_class_name(name: &str) -> Option<Strategy> {
        CLASSES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    /// Every accepted name (see [`StrategyName`]).
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|n| n.name)
    }

    /// The family's canonical name: its plain registered name, or
    /// `"model_parallel"` (shown in messages only: no string parses to it).
    pub fn name(self) -> &'static str {
        StrategyName::from_parts(self, StrategyParams::default())
            .map_or("model_parallel", StrategyName::name)
    }

    /// Parses a name into its family, leaving out what the name sets
    /// beyond it (use [`StrategyName::parse`] to keep that).
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        StrategyName::parse(value).map(StrategyName::strategy)
    }

    /// Whether the strategy runs one process per device.
    pub fn is_multi_process(self) -> bool {
        matches!(
            self,
            Strategy::Ddp
                | Strategy::DdpSpawn
                | Strategy::DdpFork
                | Strategy::DdpNotebook
                | Strategy::Fsdp
                | Strategy::DeepSpeed
                | Strategy::ModelParallel
        )
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Strategy> for Value {
    fn from(value: Strategy) -> Self {
        Value::Str(value.name().to_owned())
    }
}
