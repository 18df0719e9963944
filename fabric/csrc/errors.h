// How every C++ function of fabric's shim reports failure: it catches C++
// exceptions and returns the message as a malloc'ed string (NULL on
// success, never NULL on failure), freed by `fabric_free_error`
// (shim.cpp). When the message cannot be allocated (memory exhausted) the
// one static `out_of_memory` message stands in, which `fabric_free_error`
// recognises and does not free; every translation unit shares it, so that
// no unit returns a static string the free function would pass to `free`.

#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

namespace fabric_errors {

// Defined once, in shim.cpp.
extern char out_of_memory[];

// A malloc'ed copy of `message`, or `out_of_memory` when `allocate` fails.
// `allocate` is malloc but in the shim's own test of that failure.
inline char *error_message(const char *message, void *(*allocate)(size_t) = std::malloc) {
  size_t n = std::strlen(message) + 1;
  char *copy = static_cast<char *>(allocate(n));
  if (copy == nullptr) {
    return out_of_memory;
  }
  std::memcpy(copy, message, n);
  return copy;
}

// Runs `f`; NULL when it returns, its exception's message when it throws.
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

}  // namespace fabric_errors
