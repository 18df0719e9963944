//! Safe wrappers over the C++ shim (`csrc/shim.cpp`): the ATen functions
//! tch does not bind.

use std::ffi::{CStr, c_char, c_int};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

pub(crate) mod hooks;

unsafe extern "C" {
    fn fabric_free_error(error: *mut c_char);
    fn fabric_autocast_get(device: c_int, enabled: *mut bool, dtype: *mut c_int) -> *mut c_char;
    fn fabric_autocast_set(device: c_int, enabled: bool, dtype: c_int) -> *mut c_char;
    fn fabric_autocast_enter(depth: *mut c_int) -> *mut c_char;
    fn fabric_autocast_exit(depth: *mut c_int) -> *mut c_char;
    fn fabric_amp_non_finite_check_and_unscale(
        grads: *const *mut torch_sys::C_tensor,
        n: usize,
        found_inf: *mut torch_sys::C_tensor,
        inv_scale: *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn fabric_fused_sgd(
        params: *const *mut torch_sys::C_tensor,
        grads: *const *mut torch_sys::C_tensor,
        momentum_buffers: *const *mut torch_sys::C_tensor,
        n: usize,
        n_buffers: usize,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        dampening: f64,
        nesterov: bool,
        maximize: bool,
        is_first_step: bool,
    ) -> *mut c_char;
    fn fabric_fused_adam(
        params: *const *mut torch_sys::C_tensor,
        grads: *const *mut torch_sys::C_tensor,
        exp_avgs: *const *mut torch_sys::C_tensor,
        exp_avg_sqs: *const *mut torch_sys::C_tensor,
        max_exp_avg_sqs: *const *mut torch_sys::C_tensor,
        n_max: usize,
        steps: *const *mut torch_sys::C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        amsgrad: bool,
        maximize: bool,
        decoupled_weight_decay: bool,
    ) -> *mut c_char;
    fn fabric_foreach_norm(
        tensors: *const *mut torch_sys::C_tensor,
        n: usize,
        ord: f64,
        dtype: c_int,
        norms: *mut *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn fabric_foreach_mul_(
        tensors: *const *mut torch_sys::C_tensor,
        n: usize,
        factor: *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn fabric_set_grad(
        tensor: *mut torch_sys::C_tensor,
        grad: *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn fabric_grad_enabled() -> bool;
    fn fabric_cuda_set_device(index: c_int) -> *mut c_char;
    fn fabric_cuda_current_stream(index: c_int, stream: *mut *mut std::ffi::c_void) -> *mut c_char;
    fn fabric_cuda_stream_query(index: c_int, done: *mut bool) -> *mut c_char;
    #[cfg(test)]
    fn fabric_test_error_without_memory() -> *mut c_char;
}

/// Sets `tensor`'s gradient to `grad`, or to none (`tensor.grad = None`).
pub(crate) fn set_grad(tensor: &Tensor, grad: Option<&Tensor>) -> Result<()> {
    let grad = grad.map_or(std::ptr::null_mut(), |g| g.as_ptr() as *mut _);
    // SAFETY: both pointers are live tensors (or null for none); the shim
    // only assigns the gradient.
    check(unsafe { fabric_set_grad(tensor.as_ptr() as *mut _, grad) })
}

/// Whether autograd records operations on this thread (false under
/// `tch::no_grad`).
pub(crate) fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { fabric_grad_enabled() }
}

/// Makes CUDA device `index` the calling thread's current device.
pub(crate) fn cuda_set_device(index: usize) -> Result<()> {
    // SAFETY: plain values in, an error string or null out.
    check(unsafe { fabric_cuda_set_device(index as c_int) })
}

/// The `cudaStream_t` of the current stream of CUDA device `index`.
pub(crate) fn cuda_current_stream(index: usize) -> Result<*mut std::ffi::c_void> {
    let mut stream = std::ptr::null_mut();
    // SAFETY: `stream` is a valid out-pointer.
    check(unsafe { fabric_cuda_current_stream(index as c_int, &mut stream) })?;
    Ok(stream)
}

/// Whether the work queued on the current stream of CUDA device `index` is
/// done.
pub(crate) fn cuda_stream_done(index: usize) -> Result<bool> {
    let mut done = false;
    // SAFETY: `done` is a valid out-pointer.
    check(unsafe { fabric_cuda_stream_query(index as c_int, &mut done) })?;
    Ok(done)
}

/// Turns the shim's error string into an `Error`, freeing it.
fn check(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from the shim
    // (malloc'ed, or its static out-of-memory message), owned by us until
    // `fabric_free_error`.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `error` came from the shim and is released once, here.
    unsafe { fabric_free_error(error) };
    Err(Error::Torch(tch::TchError::Torch(message)))
}

/// The device types autocast distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AutocastDevice {
    Cpu = 0,
    Cuda = 1,
}

/// `at::ScalarType` codes of the floating-point kinds autocast uses.
fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::BFloat16 => 15,
        // Autocast only takes the kinds above; callers never pass others.
        _ => 6,
    }
}

fn kind(scalar_type: c_int) -> Kind {
    match scalar_type {
        5 => Kind::Half,
        7 => Kind::Double,
        15 => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// Whether autocast is on for `device`, and its dtype.
pub(crate) fn autocast_state(device: AutocastDevice) -> Result<(bool, Kind)> {
    let (mut enabled, mut dtype) = (false, 0);
    // SAFETY: both out-pointers are valid locals.
    check(unsafe { fabric_autocast_get(device as c_int, &mut enabled, &mut dtype) })?;
    Ok((enabled, kind(dtype)))
}

/// Sets autocast on or off for `device`, with `dtype`.
pub(crate) fn set_autocast(device: AutocastDevice, enabled: bool, dtype: Kind) -> Result<()> {
    // SAFETY: plain values in, an error string or null out.
    check(unsafe { fabric_autocast_set(device as c_int, enabled, scalar_type(dtype)) })
}

/// Enters an autocast scope; returns the nesting depth.
pub(crate) fn autocast_enter() -> Result<i32> {
    let mut depth = 0;
    // SAFETY: `depth` is a valid out-pointer.
    check(unsafe { fabric_autocast_enter(&mut depth) })?;
    Ok(depth)
}

/// Leaves an autocast scope, clearing the cast cache when it was the
/// outermost; returns the nesting depth.
pub(crate) fn autocast_exit() -> Result<i32> {
    let mut depth = 0;
    // SAFETY: `depth` is a valid out-pointer.
    check(unsafe { fabric_autocast_exit(&mut depth) })?;
    Ok(depth)
}

/// `torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)`:
/// multiplies every gradient by `inv_scale` in place and sets `found_inf`
/// to 1 if any holds an infinity or NaN.
pub(crate) fn non_finite_check_and_unscale(
    grads: &[Tensor],
    found_inf: &Tensor,
    inv_scale: &Tensor,
) -> Result<()> {
    let grads = pointers(grads);
    // SAFETY: every pointer comes from a live `Tensor` borrowed for the call;
    // the shim copies the `at::Tensor` handles before using them.
    check(unsafe {
        fabric_amp_non_finite_check_and_unscale(
            grads.as_ptr(),
            grads.len(),
            found_inf.as_ptr() as *mut _,
            inv_scale.as_ptr() as *mut _,
        )
    })
}

/// `torch._foreach_norm(tensors, ord, dtype)`: the `ord`-norm of each of
/// `tensors` (one device and dtype) as a zero-dimensional tensor, computed
/// in their dtype, or in `dtype` when given.
pub(crate) fn foreach_norm(
    tensors: &[Tensor],
    ord: f64,
    dtype: Option<Kind>,
) -> Result<Vec<Tensor>> {
    let list = pointers(tensors);
    let mut norms: Vec<*mut torch_sys::C_tensor> = vec![std::ptr::null_mut(); list.len()];
    let code = dtype.map_or(-1, scalar_type);
    // SAFETY: the input pointers come from `Tensor`s borrowed for the call;
    // `norms` has room for one pointer per tensor, which the shim fills with
    // new `at::Tensor`s only when it succeeds.
    check(unsafe {
        fabric_foreach_norm(list.as_ptr(), list.len(), ord, code, norms.as_mut_ptr())
    })?;
    Ok(norms
        .into_iter()
        // SAFETY: each pointer is a new heap `at::Tensor` from the shim,
        // owned by nobody else; the `Tensor` frees it when dropped.
        .map(|norm| unsafe { Tensor::from_ptr(norm) })
        .collect())
}

/// `torch._foreach_mul_(tensors, factor)`: multiplies each of `tensors` in
/// place by the one-element tensor `factor`.
pub(crate) fn foreach_mul_(tensors: &[Tensor], factor: &Tensor) -> Result<()> {
    let list = pointers(tensors);
    // SAFETY: every pointer comes from a `Tensor` borrowed for the call.
    check(unsafe { fabric_foreach_mul_(list.as_ptr(), list.len(), factor.as_ptr() as *mut _) })
}

/// The `at::Tensor*` handles of `tensors`, for a call that borrows them.
fn pointers(tensors: &[Tensor]) -> Vec<*mut torch_sys::C_tensor> {
    tensors.iter().map(|t| t.as_ptr() as *mut _).collect()
}

/// Checks that every list of a fused call has `n` tensors.
fn check_lengths(n: usize, lists: &[(&str, usize)]) -> Result<()> {
    match lists.iter().find(|(_, len)| *len != n) {
        Some((name, len)) => Err(Error::InvalidArgument(format!(
            "fused optimizer kernel: {len} {name} for {n} parameters"
        ))),
        None => Ok(()),
    }
}

/// The hyperparameters of one `torch._fused_sgd_` call, as its arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedSgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub maximize: bool,
    /// The kernel sets the momentum buffers to the gradients (their first
    /// step) instead of updating them.
    pub is_first_step: bool,
}

/// `torch._fused_sgd_`: one SGD step over `params` (one device and dtype).
/// `momentum_buffers` is empty when the momentum is 0.
pub(crate) fn fused_sgd(
    params: &[Tensor],
    grads: &[Tensor],
    momentum_buffers: &[Tensor],
    sgd: FusedSgd,
) -> Result<()> {
    let n = params.len();
    let buffers = if sgd.momentum == 0.0 {
        n
    } else {
        momentum_buffers.len()
    };
    check_lengths(
        n,
        &[("gradients", grads.len()), ("momentum buffers", buffers)],
    )?;
    let (p, g, b) = (
        pointers(params),
        pointers(grads),
        pointers(momentum_buffers),
    );
    // SAFETY: every pointer comes from a `Tensor` borrowed for the call, and
    // the lengths passed are those of the pointer vectors.
    check(unsafe {
        fabric_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            n,
            b.len(),
            sgd.weight_decay,
            sgd.momentum,
            sgd.lr,
            sgd.dampening,
            sgd.nesterov,
            sgd.maximize,
            sgd.is_first_step,
        )
    })
}

/// The hyperparameters of one `torch._fused_adam_` or `torch._fused_adamw_`
/// call, as their arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FusedAdam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub amsgrad: bool,
    pub maximize: bool,
    /// `_fused_adamw_` (decoupled weight decay) rather than `_fused_adam_`.
    pub decoupled_weight_decay: bool,
}

/// `torch._fused_adam_` / `torch._fused_adamw_`: one Adam step over
/// `params` (one device and dtype), incrementing `steps` first.
/// `max_exp_avg_sqs` is empty without amsgrad.
pub(crate) fn fused_adam(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    max_exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    adam: FusedAdam,
) -> Result<()> {
    let n = params.len();
    let max = if adam.amsgrad {
        max_exp_avg_sqs.len()
    } else {
        n
    };
    check_lengths(
        n,
        &[
            ("gradients", grads.len()),
            ("exp_avgs", exp_avgs.len()),
            ("exp_avg_sqs", exp_avg_sqs.len()),
            ("max_exp_avg_sqs", max),
            ("steps", steps.len()),
        ],
    )?;
    let lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps].map(pointers);
    // SAFETY: as in `fused_sgd`.
    check(unsafe {
        fabric_fused_adam(
            lists[0].as_ptr(),
            lists[1].as_ptr(),
            lists[2].as_ptr(),
            lists[3].as_ptr(),
            lists[4].as_ptr(),
            lists[4].len(),
            lists[5].as_ptr(),
            n,
            adam.lr,
            adam.beta1,
            adam.beta2,
            adam.weight_decay,
            adam.eps,
            adam.amsgrad,
            adam.maximize,
            adam.decoupled_weight_decay,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed operation whose error message cannot be allocated is still
    /// an error, with a message that says memory ran out (it was success).
    #[test]
    fn an_error_without_memory_for_its_message_is_an_error() {
        // SAFETY: no arguments; returns an error string for `check`.
        let error = check(unsafe { fabric_test_error_without_memory() }).unwrap_err();
        assert!(error.to_string().contains("out of memory"), "{error}");
        // The static message is not freed: a second one works the same.
        // SAFETY: as above.
        assert!(check(unsafe { fabric_test_error_without_memory() }).is_err());
    }
}
