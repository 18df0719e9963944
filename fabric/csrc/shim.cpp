// fabric's C++ shim: the parts of ATen that tch does not bind.
//
// - autocast state per device type (enabled flag and dtype), the autocast
//   nesting counter and cache;
// - tensor-list kernels: `_amp_foreach_non_finite_check_and_unscale_`, the
//   fused optimizers, `_foreach_norm` and `_foreach_mul_` (gradient clipping);
// - the current CUDA device and stream, through c10's device-guard registry
//   (no CUDA header needed; an error where libtorch's CUDA backend is not
//   loaded), for NCCL.
//
// Every function catches C++ exceptions and returns the message as a
// malloc'ed string (NULL on success, never NULL on failure: a static message
// when memory is exhausted), freed by `fabric_free_error` (errors.h).
// Tensors cross the boundary as tch's `C_tensor`, which is `at::Tensor*`.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <vector>

#include "errors.h"

// Returned instead of a message when the message itself cannot be
// allocated, so that a failure is never reported as success (NULL). It is
// static and shared by every file of the shim: `fabric_free_error` does not
// free it.
char fabric_errors::out_of_memory[] =
    "fabric's C++ shim: out of memory (the message of an error could not be allocated)";

namespace {

using fabric_errors::error_message;
using fabric_errors::guarded;

std::vector<at::Tensor> tensor_list(at::Tensor **tensors, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    list.push_back(*tensors[i]);
  }
  return list;
}

// Throws unless every tensor of `list` has the sizes of the parameter at its
// index: the fused kernels assume it and read out of bounds otherwise.
void check_sizes(const std::vector<at::Tensor> &params, const std::vector<at::Tensor> &list,
                 const char *what) {
  for (size_t i = 0; i < list.size() && i < params.size(); ++i) {
    TORCH_CHECK(list[i].sizes() == params[i].sizes(), "fused optimizer kernel: the ", what,
                " of parameter ", i, " of the group has the sizes ", list[i].sizes(),
                ", the parameter ", params[i].sizes());
  }
}

at::DeviceType device_type(int device) {
  return device == 1 ? at::kCUDA : at::kCPU;
}

}  // namespace

extern "C" {

void fabric_free_error(char *error) {
  if (error != fabric_errors::out_of_memory) {
    std::free(error);
  }
}

// The error of a failed operation whose message cannot be allocated (as when
// memory is exhausted): for the test that such a failure is an error.
char *fabric_test_error_without_memory() {
  return error_message("a test error", [](size_t) -> void * { return nullptr; });
}

// device: 0 = CPU, 1 = CUDA. dtype: an at::ScalarType code.
char *fabric_autocast_get(int device, bool *enabled, int *dtype) {
  return guarded([&] {
    *enabled = at::autocast::is_autocast_enabled(device_type(device));
    *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device_type(device)));
  });
}

char *fabric_autocast_set(int device, bool enabled, int dtype) {
  return guarded([&] {
    at::autocast::set_autocast_enabled(device_type(device), enabled);
    at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(dtype));
  });
}

// Returns the nesting depth after the change.
char *fabric_autocast_enter(int *depth) {
  return guarded([&] { *depth = at::autocast::increment_nesting(); });
}

// Clears the cache of casted weights when the outermost scope exits, as
// torch.autocast.__exit__ does.
char *fabric_autocast_exit(int *depth) {
  return guarded([&] {
    *depth = at::autocast::decrement_nesting();
    if (*depth == 0) {
      at::autocast::clear_cache();
    }
  });
}

char *fabric_amp_non_finite_check_and_unscale(at::Tensor **grads, size_t n, at::Tensor *found_inf,
                                              at::Tensor *inv_scale) {
  return guarded([&] {
    auto list = tensor_list(grads, n);
    at::_amp_foreach_non_finite_check_and_unscale_(list, *found_inf, *inv_scale);
  });
}

// torch.optim.SGD(fused=True)'s kernel. `momentum_buffers` is empty when
// momentum is 0; with `is_first_step` the kernel fills the buffers with
// the gradients.
char *fabric_fused_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **momentum_buffers,
                       size_t n, size_t n_buffers, double weight_decay, double momentum,
                       double lr, double dampening, bool nesterov, bool maximize,
                       bool is_first_step) {
  return guarded([&] {
    auto p = tensor_list(params, n);
    auto g = tensor_list(grads, n);
    auto b = tensor_list(momentum_buffers, n_buffers);
    check_sizes(p, g, "gradient");
    check_sizes(p, b, "momentum buffer");
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, dampening, nesterov, maximize,
                    is_first_step);
  });
}

// torch.optim.Adam/AdamW(fused=True)'s kernels. The steps are incremented
// first (once the sizes are checked), as torch.optim's `_fused_adam` does
// before calling the kernel. `max_exp_avg_sqs` is empty without amsgrad.
char *fabric_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                        at::Tensor **exp_avg_sqs, at::Tensor **max_exp_avg_sqs,
                        size_t n_max, at::Tensor **steps, size_t n, double lr, double beta1,
                        double beta2, double weight_decay, double eps, bool amsgrad,
                        bool maximize, bool decoupled_weight_decay) {
  return guarded([&] {
    auto p = tensor_list(params, n);
    auto g = tensor_list(grads, n);
    auto m = tensor_list(exp_avgs, n);
    auto v = tensor_list(exp_avg_sqs, n);
    auto v_max = tensor_list(max_exp_avg_sqs, n_max);
    check_sizes(p, g, "gradient");
    check_sizes(p, m, "exp_avg");
    check_sizes(p, v, "exp_avg_sq");
    check_sizes(p, v_max, "max_exp_avg_sq");
    auto step_list = tensor_list(steps, n);
    at::_foreach_add_(step_list, 1.0);
    if (decoupled_weight_decay) {
      at::_fused_adamw_(p, g, m, v, v_max, step_list, lr, beta1, beta2, weight_decay, eps,
                        amsgrad, maximize);
    } else {
      at::_fused_adam_(p, g, m, v, v_max, step_list, lr, beta1, beta2, weight_decay, eps,
                       amsgrad, maximize);
    }
  });
}

// `torch._foreach_norm(tensors, ord, dtype)`: the `ord`-norm of each tensor,
// written to `norms` as new tensors owned by the caller (tch's `C_tensor`,
// freed by tch's `at_free`). `dtype` is an at::ScalarType code, or -1 for
// the tensors' own (as torch.nn.utils.clip_grad_norm_).
char *fabric_foreach_norm(at::Tensor **tensors, size_t n, double ord, int dtype,
                          at::Tensor **norms) {
  return guarded([&] {
    auto list = tensor_list(tensors, n);
    std::optional<at::ScalarType> out;
    if (dtype >= 0) {
      out = static_cast<at::ScalarType>(dtype);
    }
    auto result = at::_foreach_norm(list, ord, out);
    TORCH_CHECK(result.size() == n, "_foreach_norm returned ", result.size(), " norms for ", n,
                " tensors");
    for (size_t i = 0; i < n; ++i) {
      norms[i] = new at::Tensor(std::move(result[i]));
    }
  });
}

// `torch._foreach_mul_(tensors, factor)`: multiplies every tensor in place
// by the one-element tensor `factor`.
char *fabric_foreach_mul_(at::Tensor **tensors, size_t n, at::Tensor *factor) {
  return guarded([&] {
    auto list = tensor_list(tensors, n);
    at::_foreach_mul_(list, *factor);
  });
}

// Makes `index` the calling thread's current CUDA device.
char *fabric_cuda_set_device(int index) {
  return guarded([&] {
    c10::impl::getDeviceGuardImpl(at::kCUDA)->setDevice(
        at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
  });
}

// The `cudaStream_t` of the current stream of CUDA device `index`.
char *fabric_cuda_current_stream(int index, void **stream) {
  return guarded([&] {
    auto current = c10::impl::getDeviceGuardImpl(at::kCUDA)->getStream(
        at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
    *stream = current.native_handle();
  });
}

// Whether all work queued on the current stream of CUDA device `index` is
// done.
char *fabric_cuda_stream_query(int index, bool *done) {
  return guarded([&] {
    auto *impl = c10::impl::getDeviceGuardImpl(at::kCUDA);
    *done = impl->queryStream(
        impl->getStream(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index))));
  });
}

// Sets `tensor`'s gradient to `grad`, or to none when `grad` is null (as
// `tensor.grad = None` in Python).
char *fabric_set_grad(at::Tensor *tensor, at::Tensor *grad) {
  return guarded([&] { tensor->mutable_grad() = grad == nullptr ? at::Tensor() : *grad; });
}

// Whether autograd records operations on this thread (not under no_grad).
bool fabric_grad_enabled() { return c10::GradMode::is_enabled(); }

}  // extern "C"
