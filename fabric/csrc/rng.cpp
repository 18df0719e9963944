// The states of libtorch's default random generators, for checkpoints that
// resume exactly (`fabric::checkpoint::State::rng`): the CPU generator's
// (mt19937 and its normal-distribution cache, 5056 bytes in libtorch 2.x)
// and each CUDA device's (Philox seed and offset), as PyTorch's
// `torch.get_rng_state()` / `torch.cuda.get_rng_state(i)` and their setters.
//
// CUDA generators are reached through `at::globalContext()`, so no CUDA
// header is needed; where libtorch's CUDA backend is not loaded, asking for
// one is an error (the Rust side asks only when CUDA is available).
//
// The functions catch every C++ exception and copy its message into the
// caller's buffer `error` (at most `error_len` bytes, NUL-terminated);
// they return 0 on success, 1 on an error, and `fabric_rng_get_state`
// returns 2 when `out` is too small (with `*len` set to the size needed).

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>

namespace {

at::Generator generator(int device_type, int index) {
  if (device_type == 0) {
    return at::detail::getDefaultCPUGenerator();
  }
  return at::globalContext().defaultGenerator(
      c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index)));
}

void copy_message(const char *message, char *error, size_t error_len) {
  if (error == nullptr || error_len == 0) {
    return;
  }
  std::strncpy(error, message, error_len - 1);
  error[error_len - 1] = '\0';
}

template <typename F>
int guarded(F &&f, char *error, size_t error_len) {
  try {
    return f();
  } catch (const std::exception &e) {
    copy_message(e.what(), error, error_len);
  } catch (...) {
    copy_message("unknown C++ exception", error, error_len);
  }
  return 1;
}

}  // namespace

extern "C" {

// Copies the state of the default generator of `device_type` (0: CPU,
// 1: CUDA device `index`) into `out` (`out_len` bytes); `*len` is its size.
int fabric_rng_get_state(int device_type, int index, uint8_t *out, size_t out_len, size_t *len,
                         char *error, size_t error_len) {
  return guarded(
      [&] {
        at::Generator gen = generator(device_type, index);
        at::Tensor state;
        {
          std::lock_guard<std::mutex> lock(gen.mutex());
          state = gen.get_state();
        }
        state = state.contiguous().to(at::kCPU);
        size_t n = static_cast<size_t>(state.numel()) * state.element_size();
        *len = n;
        if (n > out_len) {
          return 2;
        }
        std::memcpy(out, state.data_ptr(), n);
        return 0;
      },
      error, error_len);
}

// Sets the state of the default generator of `device_type` (as above) from
// `len` bytes at `data`; a state of the wrong size is an error and changes
// nothing.
int fabric_rng_set_state(int device_type, int index, const uint8_t *data, size_t len, char *error,
                         size_t error_len) {
  return guarded(
      [&] {
        at::Generator gen = generator(device_type, index);
        at::Tensor state = at::empty({static_cast<int64_t>(len)}, at::TensorOptions().dtype(at::kByte));
        std::memcpy(state.data_ptr(), data, len);
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(state);
        return 0;
      },
      error, error_len);
}

}  // extern "C"
