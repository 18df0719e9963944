//! [`Callback`]: objects registered with fabric and reachable by type.

use std::any::Any;

/// A callback registered through `callbacks`, as in Lightning's
/// `Fabric(callbacks=[MyCallback()])`.
///
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
    note = "implement `fabric::Callback` for `{Self}`"
)]
pub trait Callback: Any + Send {}

/// The registered callbacks, in registration order.
#[derive(Default)]
pub(crate) struct Callbacks {
    callbacks: Vec<Box<dyn Callback>>,
}

impl Callbacks {
    pub(crate) fn push(&mut self, callback: Box<dyn Callback>) {
        self.callbacks.push(callback);
    }

    pub(crate) fn len(&self) -> usize {
        self.callbacks.len()
    }

    /// The first registered callback of type `T`.
    pub(crate) fn get<T: Callback>(&self) -> Option<&T> {
        self.callbacks
            .iter()
            .find_map(|c| (&**c as &dyn Any).downcast_ref::<T>())
    }

    /// The first registered callback of type `T`, mutably.
    pub(crate) fn get_mut<T: Callback>(&mut self) -> Option<&mut T> {
        self.callbacks
            .iter_mut()
            .find_map(|c| (&mut **c as &mut dyn Any).downcast_mut::<T>())
    }
}
