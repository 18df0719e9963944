//! The `strategy` option.

use std::fmt;

use crate::error::{Key, OptionError};
use crate::value::Value;

/// How training is spread over devices, as named in Lightning Fabric.
///
/// Every name Lightning registers is recognised, so that a name that cannot
/// work in libtorch gets an error saying so rather than "unknown strategy".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// One device, or `ddp` when several devices or nodes are given (`"auto"`).
    #[default]
    Auto,
    /// One process on one device (`"single_device"`).
    SingleDevice,
    /// One process driving several GPUs, batch split between them (`"dp"`).
    Dp,
    /// One process per device, gradients averaged (`"ddp"`).
    Ddp,
    /// Like `ddp`, with fabric starting the worker processes (`"ddp_spawn"`).
    DdpSpawn,
    /// `ddp` by forking the current process (`"ddp_fork"`).
    DdpFork,
    /// `ddp_fork` for notebooks (`"ddp_notebook"`).
    DdpNotebook,
    /// Fully sharded data parallel (`"fsdp"`).
    Fsdp,
    /// Microsoft DeepSpeed (`"deepspeed"` and its `deepspeed_stage_*` variants).
    DeepSpeed,
    /// Tensor and model parallelism (`"model_parallel"`).
    ModelParallel,
    /// XLA (TPU) strategies (`"xla"`, `"xla_fsdp"`, `"single_xla"`).
    Xla,
}

const NAMES: [(&str, Strategy); 18] = [
    ("auto", Strategy::Auto),
    ("single_device", Strategy::SingleDevice),
    ("dp", Strategy::Dp),
    ("ddp", Strategy::Ddp),
    ("ddp_spawn", Strategy::DdpSpawn),
    ("ddp_fork", Strategy::DdpFork),
    ("ddp_notebook", Strategy::DdpNotebook),
    ("fsdp", Strategy::Fsdp),
    ("fsdp_cpu_offload", Strategy::Fsdp),
    ("deepspeed", Strategy::DeepSpeed),
    ("deepspeed_stage_1", Strategy::DeepSpeed),
    ("deepspeed_stage_2", Strategy::DeepSpeed),
    ("deepspeed_stage_2_offload", Strategy::DeepSpeed),
    ("deepspeed_stage_3", Strategy::DeepSpeed),
    ("deepspeed_stage_3_offload", Strategy::DeepSpeed),
    ("model_parallel", Strategy::ModelParallel),
    ("xla", Strategy::Xla),
    ("xla_fsdp", Strategy::Xla),
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

    /// Every accepted name (`"single_xla"` is accepted too, as an XLA strategy).
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(name, _)| *name).chain(["single_xla"])
    }

    /// The strategy's canonical name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("auto", |(name, _)| name)
    }

    /// Parses a name (case-insensitive, as Lightning does).
    pub fn parse(value: &Value) -> Result<Self, OptionError> {
        let Value::Str(name) = value else {
            return Err(OptionError::wrong_type(
                Key::Strategy,
                value,
                "a string such as \"ddp\"",
            ));
        };
        let lower = name.trim().to_lowercase();
        if lower == "single_xla" {
            return Ok(Strategy::Xla);
        }
        NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::names().collect();
                OptionError::invalid_name(Key::Strategy, value, "strategy", &names)
            })
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
