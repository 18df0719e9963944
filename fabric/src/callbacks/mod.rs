//! Callbacks: objects registered with fabric whose hooks
//! [`Fabric::call`](crate::Fabric::call) dispatches by type.
//!
//! A hook is a type ([`hooks::Hook`]); a callback
//! handles it by implementing [`Handles`], which `#[fabric::hooks]` writes
//! from its `#[hook]` methods. Dispatch looks the hook's type up once and
//! calls the handlers in registration order: a callback without the hook is
//! skipped by type, never by name.

mod early_stopping;
pub mod hooks;
mod outcome;
mod throughput;

pub use early_stopping::{EarlyStopping, Mode};
pub use throughput::ThroughputMonitor;

use std::any::{Any, TypeId};
use std::collections::HashMap;

pub use outcome::{IntoOutcome, Outcome};

use self::hooks::Hook;
use crate::error::{Error, Result};
use crate::loggers::LoggerError;

/// A callback registered through `callbacks`, as in Lightning's
/// `Fabric(callbacks=[MyCallback()])`.
///
/// Derive it with `#[derive(Callback)]` and give it hooks with
/// `#[fabric::hooks]` on an `impl` block whose methods carry `#[hook]`.
/// Registered callbacks are kept in registration order and reachable by type
/// through [`Fabric::callback`](crate::Fabric::callback) and
/// [`Fabric::callback_mut`](crate::Fabric::callback_mut).
///
/// ```
/// use fabric::{Callback, Fabric};
///
/// #[derive(Default)]
/// struct BatchCounter { batches: usize }
/// impl Callback for BatchCounter {}
///
/// let mut fabric = Fabric::builder().accelerator("cpu").callback(BatchCounter::default()).build().unwrap();
/// fabric.callback_mut::<BatchCounter>().unwrap().batches += 1;
/// assert_eq!(fabric.callback::<BatchCounter>().unwrap().batches, 1);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a fabric callback",
    label = "this is registered as a callback",
    note = "derive it: `#[derive(fabric::Callback)]`, or implement `fabric::Callback` for `{Self}`"
)]
pub trait Callback: Any + Send {
    /// Lists the hooks this callback handles; none by default.
    /// `#[derive(Callback)]` writes it from the callback's `#[hook]` methods.
    fn register_hooks(table: &mut HookTable<Self>)
    where
        Self: Sized,
    {
        let _ = table;
    }

    /// A name for messages; the type's name by default.
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }
}

/// A callback's handler of hook `H`. `#[fabric::hooks]` implements it for
/// each `#[hook]` method; the method's arguments are the hook's.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not handle the hook `{H}`",
    note = "give `{Self}` a `#[hook]` method for it in a `#[fabric::hooks]` impl block"
)]
pub trait Handles<H: Hook>: Callback {
    /// Runs the handler.
    fn handle(&mut self, args: H::Args<'_>) -> Result<Outcome, LoggerError>;
}

/// A `Thunk<H>` with `H` erased, recovered by downcasting with the hook's type.
type ErasedThunk = Box<dyn Any + Send + Sync>;

type Thunk<H> = for<'a> fn(&mut dyn Any, <H as Hook>::Args<'a>) -> Result<Outcome, LoggerError>;

fn thunk<C: Handles<H>, H: Hook>(
    callback: &mut dyn Any,
    args: H::Args<'_>,
) -> Result<Outcome, LoggerError> {
    match callback.downcast_mut::<C>() {
        Some(callback) => callback.handle(args),
        // The table only pairs a thunk with its own callback.
        None => Ok(Outcome::default()),
    }
}

/// The hooks one callback type handles, filled by
/// [`Callback::register_hooks`].
pub struct HookTable<C> {
    entries: Vec<(TypeId, &'static str, ErasedThunk)>,
    _callback: std::marker::PhantomData<fn(C)>,
}

impl<C: Callback> HookTable<C> {
    /// Records that `C` handles `H`.
    pub fn add<H: Hook>(&mut self) -> &mut Self
    where
        C: Handles<H>,
    {
        let thunk: Thunk<H> = thunk::<C, H>;
        self.entries
            .push((TypeId::of::<H>(), H::NAME, Box::new(thunk)));
        self
    }
}

struct Entry {
    callback: Box<dyn Callback>,
}

/// The registered callbacks, in registration order, with each hook's
/// handlers looked up in advance.
#[derive(Default)]
pub(crate) struct Callbacks {
    entries: Vec<Entry>,
    /// For each hook type: (callback index, thunk) in registration order.
    dispatch: HashMap<TypeId, Vec<(usize, ErasedThunk)>>,
}

impl Callbacks {
    pub(crate) fn push<C: Callback>(&mut self, callback: C) {
        let index = self.entries.len();
        let mut table = HookTable::<C> {
            entries: Vec::new(),
            _callback: std::marker::PhantomData,
        };
        C::register_hooks(&mut table);
        for (hook, _, thunk) in table.entries {
            self.dispatch.entry(hook).or_default().push((index, thunk));
        }
        self.entries.push(Entry {
            callback: Box::new(callback),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The first registered callback of type `T`.
    pub(crate) fn get<T: Callback>(&self) -> Option<&T> {
        self.entries
            .iter()
            .find_map(|e| (&*e.callback as &dyn Any).downcast_ref::<T>())
    }

    /// The first registered callback of type `T`, mutably.
    pub(crate) fn get_mut<T: Callback>(&mut self) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find_map(|e| (&mut *e.callback as &mut dyn Any).downcast_mut::<T>())
    }

    /// Runs every handler of `H` in registration order; the first error
    /// stops the dispatch and is returned.
    pub(crate) fn call<H: Hook>(&mut self, args: H::Args<'_>) -> Result<Outcome> {
        let Some(handlers) = self.dispatch.get(&TypeId::of::<H>()) else {
            return Ok(Outcome::default());
        };
        let mut outcome = Outcome::default();
        for (index, thunk) in handlers {
            let Some(thunk) = thunk.downcast_ref::<Thunk<H>>() else {
                continue;
            };
            let entry = &mut self.entries[*index];
            let result = thunk(&mut *entry.callback as &mut dyn Any, args.clone());
            match result {
                Ok(o) => outcome = outcome.and(o),
                Err(source) => {
                    return Err(Error::Plugin {
                        what: format!("callback `{}`: hook `{}`", entry.callback.name(), H::NAME),
                        source,
                    });
                }
            }
        }
        Ok(outcome)
    }
}
