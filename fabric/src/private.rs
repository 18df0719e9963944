//! Support for the code `#[fabric(...)]` generates. Not a public API: it may
//! change in any release.
//!
//! Besides [`launch`], this holds the compile-time checks of `plugins`. A
//! macro cannot see types, so the attribute asks the type system: each
//! plugin's kind is found with [`plugin_kind!`](crate::__plugin_kind) (a
//! cluster environment, a built-in precision plugin, a [`Plugin`] value, or
//! not a plugin at all), and the generated code calls the `check_*`
//! functions below on the kinds, spanned at the plugin expression. A
//! combination that cannot work fails a trait bound whose
//! `#[diagnostic::on_unimplemented]` message is the one the builder gives
//! at run time (`fabric_options::Options::check`).
//!
//! [`Plugin`]: crate::Plugin

use std::marker::PhantomData;

use crate::builder::FabricBuilder;
use crate::error::Error;
use crate::fabric::Fabric;
use crate::plugins::kind::{Bitsandbytes, ClusterEnvironment, Plugin, PrecisionPlugin};

pub use crate::plugins::kind;

/// The return type of a `#[fabric]` function: a `Result` whose error type
/// converts from [`fabric::Error`](crate::Error), through which the
/// generated function reports a configuration this machine cannot run.
#[diagnostic::on_unimplemented(
    message = "a #[fabric] function returns `Result<T, E>` with `E: From<fabric::Error>`, not `{Self}`",
    label = "the generated function returns configuration errors through this type",
    note = "use `fabric::Result<T>`, `anyhow::Result<T>`, or a `Result` whose error type implements `From<fabric::Error>`"
)]
pub trait TrainResult: Sized {
    /// Whether training succeeded.
    fn is_ok(&self) -> bool;

    /// The function's result for a fabric error.
    fn from_error(error: Error) -> Self;

    /// The error, described for the message of a failed rank.
    fn describe_error(&self) -> Option<String>;
}

#[diagnostic::do_not_recommend]
impl<T, E: From<Error> + std::fmt::Debug> TrainResult for Result<T, E> {
    fn is_ok(&self) -> bool {
        Result::is_ok(self)
    }

    fn describe_error(&self) -> Option<String> {
        self.as_ref().err().map(|e| format!("{e:?}"))
    }

    fn from_error(error: Error) -> Self {
        Err(E::from(error))
    }
}

/// Builds the `Fabric` configured by the attribute and runs the training
/// function with it. A configuration error is returned through the
/// function's own error type.
pub fn launch<R: TrainResult>(builder: FabricBuilder, train: fn(&mut Fabric) -> R) -> R {
    builder.launch(train)
}

/// As [`launch`], for `strategy = "ddp_spawn"`: rank 0's result comes back
/// to this process, serialised.
pub fn launch_spawn<T, E>(
    builder: FabricBuilder,
    train: fn(&mut Fabric) -> Result<T, E>,
) -> Result<T, E>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    E: From<Error> + std::fmt::Debug,
{
    builder.launch_spawn(train)
}

/// A plugin that is not one: [`FabricBuilder::plugin`] reports it, and the
/// checks let it pass so that it is reported once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotAPlugin;

/// What [`plugin_kind!`](crate::__plugin_kind) looks at: the type of a
/// plugin expression.
pub struct Probe<T>(PhantomData<T>);

/// The probe of `plugin`'s type.
pub fn probe<T>(_plugin: &T) -> Probe<T> {
    Probe(PhantomData)
}

/// The kind of a plugin's type, by autoref specialisation: method lookup
/// on `&&&Probe<T>` tries `&&Probe<T>` (a cluster environment) first, then
/// `&Probe<T>` (any other `IntoPlugin`), then `Probe<T>` (anything else).
pub mod probe {
    use super::{NotAPlugin, Probe};
    use crate::environment::ClusterEnvironment;
    use crate::plugins::{IntoPlugin, kind};

    /// A cluster environment.
    pub trait ClusterEnvironmentKind {
        /// The kind.
        fn plugin_kind(&self) -> kind::ClusterEnvironment {
            kind::ClusterEnvironment
        }
    }
    impl<T: ClusterEnvironment> ClusterEnvironmentKind for &&Probe<T> {}

    /// Another plugin: its own kind.
    pub trait KnownKind {
        /// The kind.
        type Kind;
        /// The kind.
        fn plugin_kind(&self) -> Self::Kind;
    }
    impl<T: IntoPlugin> KnownKind for &Probe<T>
    where
        T::Kind: Default,
    {
        type Kind = T::Kind;
        fn plugin_kind(&self) -> T::Kind {
            T::Kind::default()
        }
    }

    /// Not a plugin.
    pub trait OtherKind {
        /// The kind.
        fn plugin_kind(&self) -> NotAPlugin {
            NotAPlugin
        }
    }
    impl<T> OtherKind for Probe<T> {}
}

/// Plugins that fabric can run: all but bitsandbytes.
#[diagnostic::on_unimplemented(
    message = "`BitsandbytesPrecision` cannot run in fabric: bitsandbytes is a Python/CUDA library with no libtorch binding",
    label = "bitsandbytes quantisation is not available",
    note = "use `precision = \"bf16-true\"` to halve the weights' memory"
)]
pub trait RunnablePlugin {}

/// Plugins that can be given together with `precision`: all but precision
/// plugins.
#[diagnostic::on_unimplemented(
    message = "both `precision` and a precision plugin were given; choose one",
    label = "a precision plugin, while `precision` is set too",
    note = "remove `precision = ...`, or this plugin"
)]
pub trait BesidePrecisionOption {}

/// Pairs of plugins (earlier, later) that are not two cluster environments.
#[diagnostic::on_unimplemented(
    message = "two cluster environments were given; pass at most one",
    label = "a second cluster environment",
    note = "a run has one cluster environment: remove this one or the earlier one"
)]
pub trait AtMostOneClusterEnvironment {}

/// Pairs of plugins (earlier, later) that are not two precision plugins.
#[diagnostic::on_unimplemented(
    message = "two precision plugins were given; pass at most one",
    label = "a second precision plugin",
    note = "a run has one precision plugin: remove this one or the earlier one"
)]
pub trait AtMostOnePrecisionPlugin {}

/// `impl Trait for Type {}` for each type, not to be recommended in errors
/// (they would list these marker types).
macro_rules! impls {
    ($trait:ident for $($ty:ty),* $(,)?) => {$(
        #[diagnostic::do_not_recommend]
        impl $trait for $ty {}
    )*};
    ($trait:ident for any $($first:ty),* $(,)?) => {$(
        #[diagnostic::do_not_recommend]
        impl<Later> $trait for ($first, Later) {}
    )*};
}

impls!(RunnablePlugin for ClusterEnvironment, PrecisionPlugin, Plugin, NotAPlugin);
impls!(BesidePrecisionOption for ClusterEnvironment, Plugin, NotAPlugin);

impls!(AtMostOneClusterEnvironment for any PrecisionPlugin, Bitsandbytes, Plugin, NotAPlugin);
impls!(AtMostOneClusterEnvironment for
    (ClusterEnvironment, PrecisionPlugin),
    (ClusterEnvironment, Bitsandbytes),
    (ClusterEnvironment, Plugin),
    (ClusterEnvironment, NotAPlugin),
);

impls!(AtMostOnePrecisionPlugin for any ClusterEnvironment, Plugin, NotAPlugin);
impls!(AtMostOnePrecisionPlugin for
    (PrecisionPlugin, ClusterEnvironment),
    (PrecisionPlugin, Plugin),
    (PrecisionPlugin, NotAPlugin),
    (Bitsandbytes, ClusterEnvironment),
    (Bitsandbytes, Plugin),
    (Bitsandbytes, NotAPlugin),
);

/// Rejects a plugin that can never run (bitsandbytes).
pub fn check_runnable<K: RunnablePlugin>(_kind: K) {}

/// Rejects a precision plugin when `precision` is given too.
pub fn check_beside_precision_option<K: BesidePrecisionOption>(_kind: K) {}

/// Rejects a second cluster environment or a second precision plugin.
pub fn check_second_plugin<A, B>(_earlier: A, _later: B)
where
    (A, B): AtMostOneClusterEnvironment + AtMostOnePrecisionPlugin,
{
}

/// The kind of the plugin `$plugin` (a place expression, borrowed), such as
/// `fabric::__private::kind::ClusterEnvironment`.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_kind {
    ($plugin:expr) => {{
        #[allow(unused_imports)]
        use $crate::__private::probe::{
            ClusterEnvironmentKind as _, KnownKind as _, OtherKind as _,
        };
        (&&&$crate::__private::probe(&$plugin)).plugin_kind()
    }};
}

/// The hooks a callback's `#[fabric::hooks]` impl block lists.
pub trait CallbackHooks: crate::Callback + Sized {
    /// Adds them to the table.
    fn register(table: &mut crate::HookTable<Self>);
}

/// Picks, in code `#[derive(Callback)]` writes for a concrete type, the
/// `CallbackHooks` list when the type has one and nothing otherwise
/// (autoref specialisation: the `&HookProbe` impl wins method resolution
/// when it applies).
pub struct HookProbe<T>(PhantomData<T>);

impl<T> HookProbe<T> {
    /// The probe.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        HookProbe(PhantomData)
    }
}

/// The callback has a `#[fabric::hooks]` block.
pub trait ViaHooks<T> {
    /// Registers its hooks.
    fn register_hooks(&self, table: &mut crate::HookTable<T>);
}

impl<T: CallbackHooks> ViaHooks<T> for &HookProbe<T> {
    fn register_hooks(&self, table: &mut crate::HookTable<T>) {
        T::register(table);
    }
}

/// The callback has no hooks.
pub trait NoHooks<T> {
    /// Registers nothing.
    fn register_hooks(&self, table: &mut crate::HookTable<T>);
}

impl<T> NoHooks<T> for HookProbe<T> {
    fn register_hooks(&self, _table: &mut crate::HookTable<T>) {}
}

/// Runs `strategy = "dp"` over `replicas` copies of the model on the CPU,
/// where `dp` proper needs CUDA devices: the batch is split, the replicas
/// run and their gradients are added up exactly as between GPUs, which lets
/// `dp` be tested on machines without GPUs. Not for training.
pub fn simulate_dp_on_cpu(builder: FabricBuilder, replicas: usize) -> FabricBuilder {
    simulate_dp(builder, vec![tch::Device::Cpu; replicas.max(1)])
}

/// Runs `strategy = "dp"` over `devices`, repeats allowed (two replicas on
/// one GPU test `dp` on a machine with one). Not for training.
pub fn simulate_dp(mut builder: FabricBuilder, devices: Vec<tch::Device>) -> FabricBuilder {
    builder.simulated_dp = Some(devices);
    builder
}

/// Joins a world of one (this process) in MPI and NCCL on CUDA device
/// `device`, and checks NCCL's all-reduce, broadcast and all-gather on
/// CUDA tensors of several kinds and layouts against the expected values.
/// For the GPU tests, on machines with a single GPU.
pub fn nccl_single_rank_check(device: usize) -> crate::Result<()> {
    use crate::collectives::{Comm, MpiComm, NcclComm, ReduceOp};
    use std::time::Duration;
    use tch::{Device, Kind, Tensor};

    let timeout = Duration::from_secs(60);
    let mpi = MpiComm::join(0, 1, timeout, Duration::from_secs(10))?;
    let nccl = NcclComm::join(&mpi, device, timeout)?;
    let comm = Comm::new(mpi, Some(nccl));
    let cuda = Device::Cuda(device);
    let mismatch = |what: String| Err(Error::Distributed(format!("NCCL check failed: {what}")));
    for kind in [
        Kind::Float,
        Kind::Double,
        Kind::BFloat16,
        Kind::Half,
        Kind::Int64,
        Kind::Int,
    ] {
        // Non-contiguous: a transposed 3x5 matrix.
        let tensor = Tensor::arange(15, (Kind::Int64, Device::Cpu))
            .view([3, 5])
            .to_kind(kind)
            .to_device(cuda)
            .tr();
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Mean] {
            let reduced = comm.all_reduce(&tensor, op)?;
            let expected = if op == ReduceOp::Mean && !tensor.is_floating_point() {
                tensor.to_kind(Kind::Float)
            } else {
                tensor.shallow_clone()
            };
            if reduced.size() != expected.size()
                || !reduced
                    .to_kind(Kind::Double)
                    .equal(&expected.to_kind(Kind::Double))
            {
                return mismatch(format!("all_reduce {op:?} of {kind:?}"));
            }
        }
        let broadcast = comm.broadcast(&tensor, 0)?;
        if !broadcast.equal(&tensor) {
            return mismatch(format!("broadcast of {kind:?}"));
        }
        let gathered = comm.all_gather(&tensor)?;
        if gathered.size() != [1, 5, 3] || !gathered.get(0).equal(&tensor) {
            return mismatch(format!("all_gather of {kind:?}"));
        }
    }
    let empty = Tensor::zeros([0], (Kind::Float, cuda));
    if comm.all_reduce(&empty, ReduceOp::Sum)?.numel() != 0 {
        return mismatch("all_reduce of an empty tensor".into());
    }
    Ok(())
}

/// Sets a tensor's gradient to none, as libtorch's optimizers'
/// `zero_grad` does (tch's `Tensor::zero_grad` zeroes it instead). For
/// tests.
pub fn clear_grad(tensor: &tch::Tensor) -> crate::Result<()> {
    crate::shim::set_grad(tensor, None)
}

pub use crate::cuda::Backend as CudaBackend;

/// Loads libtorch's CUDA backend as fabric does before it first asks about
/// CUDA; `force` loads it even without a CUDA driver. For tests.
pub fn load_cuda_backend(force: bool) -> CudaBackend {
    crate::cuda::load_backend(force)
}

/// Whether libtorch's CUDA backend was looked for already (it is, before
/// `main`). For tests.
pub fn cuda_backend_checked() -> bool {
    crate::cuda::checked()
}

/// The directory with a `libnccl.so` link that fabric's launcher puts on
/// its CUDA ranks' library path, if one is needed. For tests.
pub fn nccl_library_link_dir() -> Option<std::path::PathBuf> {
    crate::collectives::nccl::library_link_dir()
}

#[cfg(test)]
mod tests {
    use crate::precision::{BitsandbytesPrecision, MixedPrecision, PrecisionPlugin};
    use crate::{Plugin, SingleProcessEnvironment};

    /// The name of a kind's type.
    fn kind<K>(_: K) -> &'static str {
        let name = std::any::type_name::<K>();
        name.rsplit("::").next().unwrap_or(name)
    }

    struct Plain;
    impl PrecisionPlugin for Plain {}

    #[test]
    fn plugin_kinds_are_found_from_the_type() {
        let environment = SingleProcessEnvironment;
        assert_eq!(
            kind(crate::__plugin_kind!(environment)),
            "ClusterEnvironment"
        );
        let mixed = MixedPrecision::bf16();
        assert_eq!(kind(crate::__plugin_kind!(mixed)), "PrecisionPlugin");
        let bnb = BitsandbytesPrecision::new("nf4");
        assert_eq!(kind(crate::__plugin_kind!(bnb)), "Bitsandbytes");
        let plugin = Plugin::precision(Plain);
        assert_eq!(kind(crate::__plugin_kind!(plugin)), "Plugin");
        let plain = Plain;
        assert_eq!(kind(crate::__plugin_kind!(plain)), "NotAPlugin");
        assert_eq!(kind(crate::__plugin_kind!(42u8)), "NotAPlugin");
    }
}
