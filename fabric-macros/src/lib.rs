//! The `#[fabric(...)]` attribute of the [fabric] crate: Lightning Fabric's
//! constructor options, checked by the compiler.
//!
//! Use it through `fabric`, which re-exports it as `fabric::fabric`; the
//! documentation of [`macro@fabric`] is the attribute's reference.
//!
//! The attribute runs in stages, as tokio's `#[tokio::main]` does, each
//! module using only those before it:
//!
//! 1. `parse.rs` reads the arguments into a `Config` that remembers where
//!    each value was written, turning each literal into a value
//!    (`literal.rs`) and parsing it into the typed `Options` of
//!    `tch-fabric-options` (the parser the runtime uses too);
//! 2. `validate.rs` asks `tch-fabric-options` which combinations of those
//!    options cannot work;
//! 3. `signature.rs` checks the function;
//! 4. `generate.rs` writes the code from the typed options.
//!
//! Every error found on the way is collected in a `Ctxt` (`ctxt.rs`, as
//! serde_derive does) and reported together, each pointing at the token it
//! is about. The code is also emitted when there are errors, so that they
//! are the only ones the user sees.
//!
//! [fabric]: https://docs.rs/tch-fabric

mod ctxt;
mod generate;
mod literal;
mod parse;
mod signature;
mod validate;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use syn::Item;

use crate::ctxt::Ctxt;

/// Runs a training function with a [`Fabric`] configured by Lightning
/// Fabric's constructor options, which are checked at compile time.
///
/// ```ignore
/// use fabric::{fabric, Fabric};
///
/// #[fabric(accelerator = "cpu", devices = 1, precision = "bf16-mixed")]
/// fn train(fabric: &mut Fabric) -> fabric::Result<f64> {
///     let mut vs = tch::nn::VarStore::new(fabric.device());
///     // ... set up the model and optimizer with `fabric.setup(...)`,
///     // run the loop, `fabric.backward(&loss)`, `fabric.log(...)` ...
///     Ok(0.0)
/// }
///
/// fn main() -> fabric::Result<()> {
///     let loss = train()?; // the attribute builds the `Fabric`
///     println!("final loss {loss}");
///     Ok(())
/// }
/// ```
///
/// (This crate only defines the attribute, which its own doctests cannot
/// use; the examples compile in the `fabric` crate's documentation and
/// tests.)
///
/// # Options
///
/// The options are those of Lightning's `Fabric(...)` constructor, written
/// as `key = value` and separated by commas; every one is optional.
///
/// | option | values | default |
/// |---|---|---|
/// | `accelerator` | `"cpu"`, `"cuda"`, `"gpu"`, `"mps"`, `"auto"` | `"auto"` |
/// | `strategy` | `"auto"`, `"single_device"`, `"ddp"`, `"ddp_spawn"`, and the other names Lightning registers, such as `"ddp_find_unused_parameters_true"` | `"auto"` |
/// | `devices` | a count `2`, all `-1`, indices `[1, 4]` or `"1, 4"`, the CPU `0` or `None`, `"auto"` | `"auto"` |
/// | `num_nodes` | a positive integer | `1` |
/// | `precision` | `"32-true"`, `"64-true"`, `"16-true"`, `"bf16-true"`, `"16-mixed"`, `"bf16-mixed"`, or an alias `32`, `"bf16"`, ... | `"32-true"` |
/// | `callbacks` | an expression, or a list `[a, b]` of them, each a [`Callback`] | none |
/// | `loggers` | an expression, or a list of them, each a [`Logger`] | none |
/// | `plugins` | an expression, or a list of them, each an [`IntoPlugin`]: a [`ClusterEnvironment`], a built-in precision plugin, or a [`Plugin`] | none |
/// | `crate` | the path of the fabric crate, as a string | `"::fabric"` |
///
/// `accelerator`, `strategy`, `devices`, `num_nodes` and `precision` take
/// **literals**: strings, integers (`-1` included), lists of integers
/// (`[1, 4]`) and `None`. The attribute checks them at compile time, so it
/// cannot read a constant or a variable; a value known only at run time goes
/// to [`Fabric::builder()`] instead. `callbacks`, `loggers` and `plugins`
/// take any expressions, evaluated in order when the function is called:
///
/// ```ignore
/// #[fabric(
///     accelerator = "cpu",
///     precision = "64-true",
///     callbacks = [EarlyStopping::new("val_loss", 3), ThroughputMonitor::new(10)],
///     loggers = CsvLogger::new("runs", "train"),
///     plugins = [MyCluster],
/// )]
/// fn train(fabric: &mut Fabric) -> anyhow::Result<()> { ... }
/// ```
///
/// `crate = "..."` names the fabric crate when it is reached through another
/// path, as serde's `#[serde(crate = "...")]`: a crate that re-exports
/// fabric as `my_framework::fabric` writes
/// `#[fabric(crate = "my_framework::fabric", accelerator = "cpu")]`.
///
/// # What is checked at compile time
///
/// The values are parsed by `tch-fabric-options`, the parser the runtime's
/// builder uses too, so the attribute and the builder accept the same values
/// and give the same messages. An error points at the offending token, and
/// all of them are reported at once:
///
/// - an unknown option, with a suggestion for a misspelt one
///   (`precison` → "did you mean `precision`?"); an option given twice;
/// - a value that is not a literal, or not of a form the option takes
///   (`precision = 1.5`, `accelerator = cpu`);
/// - an unknown accelerator, strategy or precision, with a suggestion
///   (`accelerator = "cdua"` → "did you mean `cuda`?"); a `devices` value that
///   selects nothing, repeats a device, or is below -1; a `num_nodes` below 1;
/// - combinations that cannot work on any machine: `"dp"` or `"16-mixed"` on
///   the CPU, a DDP-family strategy with `"mps"`, `"single_device"` with
///   several devices, `devices = 0` (the CPU) with a GPU accelerator, and the
///   Lightning options libtorch has no implementation of (`"tpu"`, `"fsdp"`,
///   `"deepspeed"`, `"transformer-engine"`, ...). A combination error points
///   at the option the message is about.
///
/// The kind of each plugin is its type, which a macro cannot see: the
/// generated code asks the compiler, so that these are compile errors too,
/// pointing at the plugin (with the messages the builder gives at run time):
///
/// - two cluster environments, or two precision plugins;
/// - a precision plugin together with `precision`;
/// - `BitsandbytesPrecision`, which has no libtorch binding;
/// - an expression that is not a plugin ("`X` is not a fabric plugin").
///
/// A [`Plugin`] value (such as `Plugin::precision(MyPrecision)`) is checked
/// when the function is called.
///
/// What depends on the machine — whether CUDA is present, how many GPUs
/// there are — is checked when the function is called, with the same
/// messages, and returned as an error. So are the `LT_*` variables that
/// Lightning's CLI sets (`LT_ACCELERATOR`, `LT_STRATEGY`, `LT_DEVICES`,
/// `LT_NUM_NODES`, `LT_PRECISION`): as in Lightning, each one that is set
/// overrides the attribute's value, parsed with the same messages ("invalid
/// `precision` (from LT_PRECISION=bf16-mixd): ..."); with `LT_CLI_USED=1`, a
/// value in the attribute that differs from its variable is an error.
///
/// # The function
///
/// The attribute goes on a function that takes the `Fabric` it trains with
/// and returns a `Result` whose error type converts from [`fabric::Error`]
/// (such as `fabric::Error` itself, or `anyhow::Error`):
///
/// ```ignore
/// #[fabric(accelerator = "cpu")]
/// pub fn train(fabric: &mut Fabric) -> Result<Metrics, fabric::Error> { ... }
/// ```
///
/// The parameter's type is `&mut Fabric`, written with any path ending in
/// `Fabric`. The function cannot be generic, `async`, `const`, `unsafe` or a
/// method, and its return type must be written. A return type that cannot be
/// a `Result` (`f64`, `()`, `String`, ...) is reported by the attribute; one
/// it cannot see through (an alias), or an error type without
/// `From<fabric::Error>`, is reported by the compiler in one error pointing
/// at the return type ("a #[fabric] function returns `Result<T, E>` with
/// `E: From<fabric::Error>`, not `Result<(), String>`").
///
/// It becomes a function with the same name, visibility, attributes and
/// return type and **no parameters**:
///
/// ```ignore
/// pub fn train() -> Result<Metrics, fabric::Error> {
///     fn __fabric_train(fabric: &mut Fabric) -> Result<Metrics, fabric::Error> {
///         /* the body as written */
///     }
///     ::fabric::__private::launch(
///         ::fabric::Fabric::builder()
///             .accelerator(::fabric::options::Value::Str(::std::string::String::from("cpu"))),
///         __fabric_train,
///     )
/// }
/// ```
///
/// With `plugins`, their expressions are evaluated first, into a tuple, and
/// their kinds checked before the builder takes them:
///
/// ```ignore
/// let __fabric_plugins = (MyCluster, MixedPrecision::bf16(),);
/// let __fabric_kinds = (
///     ::fabric::__private::plugin_kind!(__fabric_plugins.0),
///     ::fabric::__private::plugin_kind!(__fabric_plugins.1),
/// );
/// ::fabric::__private::check_runnable(__fabric_kinds.0);
/// ::fabric::__private::check_runnable(__fabric_kinds.1);
/// ::fabric::__private::check_second_plugin(__fabric_kinds.0, __fabric_kinds.1);
/// ::fabric::__private::launch(
///     ::fabric::Fabric::builder().plugin(__fabric_plugins.0).plugin(__fabric_plugins.1),
///     __fabric_train,
/// )
/// ```
///
/// Calling `train()` builds the `Fabric` (a configuration this machine
/// cannot run is returned as the function's error, converted with
/// `From<fabric::Error>`), runs the body with it, and finalises the loggers.
/// It is the launch step (`FabricBuilder::launch`): with several processes
/// and no launcher around (`devices = 2` with `ddp`, run plainly), the
/// process that calls it starts the ranks under `mpirun`, waits for them
/// and ends with their status; each rank runs `train()` and gets its result.
/// A rank whose body fails or panics finalises its loggers and ends the run,
/// naming itself.
///
/// # Process-wide settings
///
/// The function's `Fabric` keeps the builder's defaults for what it changes
/// in the process, each documented on `FabricBuilder`:
///
/// | setting | default |
/// |---|---|
/// | `intra_op_threads` | `Threads::Auto`: the cores of a node shared between its CPU ranks, unless `OMP_NUM_THREADS` is set |
/// | `keep_freed_memory` | on for CPU runs: glibc's `malloc` keeps freed heap memory between steps (unless `GLIBC_TUNABLES`/`MALLOC_*_` are set, or `FABRIC_KEEP_FREED_MEMORY=0`) |
/// | `load_cuda_backend` | on: libtorch's CUDA backend is loaded before CUDA is first asked about, where a driver is installed (not for `accelerator = "cpu"`; off with `FABRIC_LOAD_CUDA=0`) |
///
/// In a run of several processes, the launcher installs the failure
/// handling of each rank: when `mpirun` ends it (SIGTERM, SIGINT, SIGHUP)
/// its loggers are finalised first. To change a setting, configure the run
/// with `Fabric::builder()` instead of the attribute.
///
/// When the attribute or the signature has errors, the function is still
/// emitted with its body, so the errors shown are the attribute's and the
/// body's own, not ones caused by a missing function.
///
/// [`Fabric`]: https://docs.rs/tch-fabric/latest/fabric/struct.Fabric.html
/// [`Fabric::builder()`]: https://docs.rs/tch-fabric/latest/fabric/struct.Fabric.html#method.builder
/// [`fabric::Error`]: https://docs.rs/tch-fabric/latest/fabric/enum.Error.html
/// [`Callback`]: https://docs.rs/tch-fabric/latest/fabric/trait.Callback.html
/// [`Logger`]: https://docs.rs/tch-fabric/latest/fabric/trait.Logger.html
/// [`Plugin`]: https://docs.rs/tch-fabric/latest/fabric/enum.Plugin.html
/// [`ClusterEnvironment`]: https://docs.rs/tch-fabric/latest/fabric/trait.ClusterEnvironment.html
/// [`IntoPlugin`]: https://docs.rs/tch-fabric/latest/fabric/trait.IntoPlugin.html
#[proc_macro_attribute]
pub fn fabric(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args.into(), item.into()).into()
}

/// The expansion, on `proc_macro2` tokens so that it can be unit-tested.
fn expand(args: TokenStream2, item: TokenStream2) -> TokenStream2 {
    let (mut output, errors) = expand_with_errors(args, item);
    if let Err(errors) = errors {
        output.extend(errors.into_compile_error());
    }
    output
}

/// The code, and every error (combined) that goes with it.
fn expand_with_errors(
    args: TokenStream2,
    item: TokenStream2,
) -> (TokenStream2, Result<(), syn::Error>) {
    let cx = Ctxt::new();
    let config = parse::parse_config(args, &cx);
    validate::check_combinations(&config, &cx);
    let config_ok = !cx.has_errors();

    let output = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(function)) => {
            let errors_before = cx.error_count();
            signature::check(&function, &cx);
            if cx.error_count() == errors_before {
                generate::wrapper(function, &config, config_ok)
            } else {
                generate::fallback(function)
            }
        }
        Ok(other) => {
            let (tokens, what) = signature::not_a_function(&other);
            cx.error_spanned_by(
                tokens,
                format!(
                    "#[fabric] goes on the training function, `fn train(fabric: &mut Fabric) -> Result<..>`, not on {what}"
                ),
            );
            item
        }
        // Not an item syn understands: leave it to the compiler, which
        // reports its own syntax errors.
        Err(error) => {
            cx.syn_error(error);
            item
        }
    };
    (output, cx.check())
}

#[cfg(test)]
mod tests;

mod callbacks;
mod tensors;

/// Implements `fabric::Tensors` for a struct or enum of tensors and plain
/// values, so that it can be a set-up model's arguments or outputs: each
/// field goes through its own `Tensors` implementation, in declaration
/// order, and a field marked `#[tensors(skip)]` is cloned as it is. The
/// fields that are not skipped must own their tensors (`Tensor`, not
/// `&Tensor`).
///
/// ```ignore
/// use fabric::Tensors;
/// use tch::Tensor;
///
/// #[derive(Tensors)]
/// struct Batch {
///     images: Tensor,
///     labels: Tensor,
///     augment: bool,
/// }
/// ```
#[proc_macro_derive(Tensors, attributes(tensors))]
pub fn derive_tensors(input: TokenStream) -> TokenStream {
    tensors::derive_tensors(input.into()).into()
}

/// Implements `fabric::Callback` for a struct or enum, registering the hooks
/// of its `#[fabric::hooks]` impl block, if it has one.
///
/// ```ignore
/// use fabric::{Callback, hooks};
///
/// #[derive(Callback, Default)]
/// struct Counter { epochs: usize }
///
/// #[hooks]
/// impl Counter {
///     #[hook]
///     fn on_train_epoch_end(&mut self, epoch: usize, metrics: &fabric::hooks::Metrics) {
///         self.epochs = epoch + 1;
///     }
/// }
/// ```
#[proc_macro_derive(Callback)]
pub fn derive_callback(input: TokenStream) -> TokenStream {
    callbacks::derive_callback(input.into()).into()
}

/// Makes the `#[hook]` methods of an `impl` block handlers of their hooks:
/// `#[hook]` alone takes the standard hook of the method's name
/// (`on_train_epoch_end` handles `fabric::hooks::OnTrainEpochEnd`), and
/// `#[hook(MyHook)]` a hook declared with `fabric::declare_hook!`. The method's
/// parameters are the hook's arguments; it returns `()`, `fabric::Outcome`
/// or a `Result` of either.
#[proc_macro_attribute]
pub fn hooks(args: TokenStream, item: TokenStream) -> TokenStream {
    callbacks::hooks_impl(args.into(), item.into()).into()
}

/// Marks a hook method inside a `#[fabric::hooks]` impl block; anywhere else
/// it is an error.
#[proc_macro_attribute]
pub fn hook(_args: TokenStream, item: TokenStream) -> TokenStream {
    callbacks::hook_outside(item.into()).into()
}
