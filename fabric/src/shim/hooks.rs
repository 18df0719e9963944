//! Gradient-ready hooks (`csrc/hooks.cpp`): a post hook on the gradient
//! accumulator of each parameter, which marks the parameter ready once its
//! gradient is accumulated, so that `ddp` can start a bucket's all-reduce
//! while the backward pass goes on, as PyTorch's DDP reducer does.
//!
//! The hooks only record: a parameter is marked ready while a backward pass
//! is [armed](GradReadyHooks::arm), and a waiter on another thread learns
//! which are. Outside an armed pass (a backward pass outside fabric, or
//! under `no_backward_sync`) they do nothing.

use std::ffi::{c_char, c_void};
use std::sync::{Condvar, Mutex, MutexGuard};

use tch::Tensor;

use super::check;
use crate::error::Result;

#[repr(C)]
struct RawHook {
    _private: [u8; 0],
}

type ReadyFn = extern "C" fn(context: *mut c_void, index: usize);

unsafe extern "C" {
    fn fabric_grad_hook_register(
        param: *mut torch_sys::C_tensor,
        ready: ReadyFn,
        context: *mut c_void,
        index: usize,
        hook: *mut *mut RawHook,
    ) -> *mut c_char;
    fn fabric_grad_hook_remove(hook: *mut RawHook);
    fn fabric_grad_hooks_reached(
        loss: *mut torch_sys::C_tensor,
        hooks: *const *mut RawHook,
        n: usize,
        reached: *mut bool,
    ) -> *mut c_char;
}

/// What the hooks and the waiters share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Whether a backward pass is armed: only then do hooks mark.
    armed: bool,
    /// Whether the armed pass ended (its backward returned).
    finished: bool,
    /// Which parameters' gradients are accumulated in the armed pass.
    ready: Vec<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hook's callback: marks parameter `index` ready.
extern "C" fn on_ready(context: *mut c_void, index: usize) {
    // Nothing may unwind into C++; a panic here (there is none to expect)
    // leaves the parameter unmarked, which the end of the pass covers.
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `context` is the `Shared` of the `GradReadyHooks` that
        // registered this hook; it lives in a box until the hooks are
        // removed (in `drop`), and no hook runs after its removal.
        let shared = unsafe { &*(context as *const Shared) };
        let mut state = shared.lock();
        if state.armed
            && let Some(ready) = state.ready.get_mut(index)
        {
            *ready = true;
            drop(state);
            shared.changed.notify_all();
        }
    });
}

/// Hooks on the parameters given to [`add`](Self::add), numbered in the
/// order they were added. Dropping it removes them.
#[derive(Default)]
pub(crate) struct GradReadyHooks {
    /// Boxed: its address is the hooks' context.
    shared: Box<Shared>,
    hooks: Vec<*mut RawHook>,
}

// SAFETY: the raw hooks are owned here and touched only through `&mut self`
// (`add`, `drop`) or read (`reached`); the C++ objects they point to are not
// tied to a thread. `Shared` is `Sync`.
unsafe impl Send for GradReadyHooks {}

impl std::fmt::Debug for GradReadyHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradReadyHooks")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl GradReadyHooks {
    /// The number of parameters hooked.
    pub(crate) fn len(&self) -> usize {
        self.hooks.len()
    }

    /// Hooks `params` (leaf tensors that require a gradient), numbered from
    /// [`len`](Self::len) on.
    pub(crate) fn add(&mut self, params: &[Tensor]) -> Result<()> {
        let context = &*self.shared as *const Shared as *mut c_void;
        for param in params {
            let index = self.hooks.len();
            let mut hook = std::ptr::null_mut();
            // SAFETY: `param` is a live tensor; `on_ready` and `context`
            // stay valid until the hook is removed (see `on_ready`);
            // `hook` is a valid out-pointer.
            check(unsafe {
                fabric_grad_hook_register(
                    param.as_ptr() as *mut _,
                    on_ready,
                    context,
                    index,
                    &mut hook,
                )
            })?;
            self.hooks.push(hook);
            self.shared.lock().ready.push(false);
        }
        Ok(())
    }

    /// Which hooked parameters a backward pass from `loss` reaches (their
    /// gradient accumulators are in its graph), in hook order.
    pub(crate) fn reached(&self, loss: &Tensor) -> Result<Vec<bool>> {
        let mut reached = vec![false; self.hooks.len()];
        // SAFETY: `loss` is a live tensor; `hooks` holds `len` live hooks;
        // `reached` has room for `len` flags.
        check(unsafe {
            fabric_grad_hooks_reached(
                loss.as_ptr() as *mut _,
                self.hooks.as_ptr(),
                self.hooks.len(),
                reached.as_mut_ptr(),
            )
        })?;
        Ok(reached)
    }

    /// Arms a backward pass: from now until [`finish`](Self::finish), each
    /// hook marks its parameter ready.
    pub(crate) fn arm(&self) {
        let mut state = self.shared.lock();
        state.armed = true;
        state.finished = false;
        state.ready.iter_mut().for_each(|r| *r = false);
    }

    /// Ends the armed pass: the hooks stop marking, and waiters return.
    pub(crate) fn finish(&self) {
        let mut state = self.shared.lock();
        state.armed = false;
        state.finished = true;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// A handle that another thread waits on.
    pub(crate) fn waiter(&self) -> ReadyWaiter<'_> {
        ReadyWaiter {
            shared: &self.shared,
        }
    }
}

impl Drop for GradReadyHooks {
    fn drop(&mut self) {
        for hook in self.hooks.drain(..) {
            // SAFETY: each hook was registered by `add` and is removed once.
            unsafe { fabric_grad_hook_remove(hook) };
        }
    }
}

/// Waits, on another thread, for parameters to be ready.
#[derive(Clone, Copy)]
pub(crate) struct ReadyWaiter<'a> {
    shared: &'a Shared,
}

impl ReadyWaiter<'_> {
    /// Waits until every parameter of `indices` is ready, or the pass
    /// [finished](GradReadyHooks::finish). Returns whether they all were
    /// ready.
    pub(crate) fn wait(&self, indices: &[usize]) -> bool {
        let mut state = self.shared.lock();
        loop {
            if indices
                .iter()
                .all(|&i| state.ready.get(i).copied().unwrap_or(true))
            {
                return true;
            }
            if state.finished {
                return false;
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::GradReadyHooks;

    #[test]
    fn hooks_mark_the_parameters_a_backward_pass_accumulates_while_armed() {
        let a = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut hooks = GradReadyHooks::default();
        hooks.add(&[a.shallow_clone(), b.shallow_clone()]).unwrap();
        let loss = (&a * 2.0).sum(Kind::Float);
        assert_eq!(hooks.reached(&loss).unwrap(), [true, false]);
        // Not armed: nothing marked.
        loss.backward();
        assert_eq!(hooks.shared.lock().ready, [false, false]);
        hooks.arm();
        (&b * 3.0).sum(Kind::Float).backward();
        assert_eq!(hooks.shared.lock().ready, [false, true]);
        assert!(hooks.waiter().wait(&[1]));
        hooks.finish();
        assert!(!hooks.waiter().wait(&[0, 1]));
        drop(hooks);
        // Removed: a later backward pass calls nothing.
        (&a * 2.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(a.grad()).unwrap(), [4.0; 3]);
    }
}
