// fabric's C++ shim: the parts of ATen that tch does not bind.
//
// - autocast state per device type (enabled flag and dtype), the autocast
//   nesting counter and cache;
// - tensor-list kernels: `_amp_foreach_non_finite_check_and_unscale_` and the
//   fused optimizers.
//
// Every function catches C++ exceptions and returns the message as a
// malloc'ed string (NULL on success), freed by `fabric_free_error`.
// Tensors cross the boundary as tch's `C_tensor`, which is `at::Tensor*`.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <vector>

namespace {

char *error_message(const char *message) {
  size_t n = std::strlen(message) + 1;
  char *copy = static_cast<char *>(std::malloc(n));
  if (copy != nullptr) {
    std::memcpy(copy, message, n);
  }
  return copy;
}

template <typename F>
char *guarded(F &&f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception &e) {
    return error_message(e.what());
  } catch (...) {
    return error_message("unknown C++ exception");
  }
}

std::vector<at::Tensor> tensor_list(at::Tensor **tensors, size_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    list.push_back(*tensors[i]);
  }
  return list;
}

at::DeviceType device_type(int device) {
  return device == 1 ? at::kCUDA : at::kCPU;
}

}  // namespace

extern "C" {

void fabric_free_error(char *error) { std::free(error); }

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

}  // extern "C"
