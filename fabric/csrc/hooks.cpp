// fabric's autograd hooks: a post hook on the gradient accumulator of a
// parameter, which calls back into Rust once the parameter's gradient is
// accumulated (as PyTorch's DDP reducer, `reducer.cpp`, registers its
// `autograd_hook` with `grad_accumulator->add_post_hook`), and a walk of a
// loss's graph to find which accumulators a backward pass will run.
//
// Errors come back as malloc'ed messages, freed by `fabric_free_error`
// (errors.h, shim.cpp); nothing here lets a C++ exception cross into Rust.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <stdexcept>
#include <unordered_set>
#include <vector>

#include "errors.h"

using fabric_errors::guarded;

// Called with the context and the index given at registration, on the
// thread that runs the accumulator (the one calling backward, for CPU
// tensors), once the gradient is accumulated. It must not unwind.
typedef void (*fabric_grad_ready_fn)(void *context, size_t index);

// A registered hook: the parameter, the accumulator the hook is on (held,
// so that every later graph reuses this accumulator, and with it the hook,
// as the reducer does), the key that removes it, and what it calls.
struct FabricGradHook {
  at::Tensor param;
  c10::intrusive_ptr<torch::autograd::Node> accumulator;
  uintptr_t key;
  fabric_grad_ready_fn ready;
  void *context;
  size_t index;
};

namespace {

// Puts the hook on the parameter's current accumulator (creating it if the
// parameter has none).
void attach(FabricGradHook &hook) {
  auto accumulator = torch::autograd::impl::grad_accumulator(hook.param);
  if (!accumulator) {
    throw std::runtime_error("the parameter has no gradient accumulator");
  }
  auto ready = hook.ready;
  auto context = hook.context;
  auto index = hook.index;
  hook.key = accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
      [ready, context, index](const torch::autograd::variable_list &outputs,
                              const torch::autograd::variable_list & /* inputs */) {
        ready(context, index);
        return outputs;
      }));
  hook.accumulator = std::move(accumulator);
}

}  // namespace

extern "C" {

char *fabric_grad_hook_register(at::Tensor *param, fabric_grad_ready_fn ready, void *context,
                                size_t index, FabricGradHook **hook) {
  return guarded([&] {
    if (!param->requires_grad() || !param->is_leaf()) {
      throw std::invalid_argument(
          "a gradient hook goes on a leaf tensor that requires a gradient (a parameter)");
    }
    // Allocated first, so that nothing can fail once the hook is on the
    // accumulator.
    auto registered = std::make_unique<FabricGradHook>(
        FabricGradHook{*param, {}, 0, ready, context, index});
    attach(*registered);
    *hook = registered.release();
  });
}

// Removes the hook and lets its accumulator go.
void fabric_grad_hook_remove(FabricGradHook *hook) {
  if (hook == nullptr) {
    return;
  }
  hook->accumulator->del_post_hook(hook->key);
  delete hook;
}

// Which of `hooks`' accumulators a backward pass from `loss` runs: the
// nodes reachable from the loss's gradient edge (as DDP's
// find_unused_parameters search), `reached[i]` for `hooks[i]`.
char *fabric_grad_hooks_reached(at::Tensor *loss, FabricGradHook **hooks, size_t n,
                                bool *reached) {
  return guarded([&] {
    // A parameter whose dtype or device changed since the hook was put on
    // (`set_data`) has a new accumulator, which later graphs use: the hook
    // moves to it, or the pass would never call it.
    for (size_t i = 0; i < n; ++i) {
      auto current = torch::autograd::impl::try_get_grad_accumulator(hooks[i]->param);
      if (current.get() != hooks[i]->accumulator.get()) {
        hooks[i]->accumulator->del_post_hook(hooks[i]->key);
        attach(*hooks[i]);
      }
    }
    std::unordered_set<torch::autograd::Node *> seen;
    std::vector<torch::autograd::Node *> stack;
    auto root = torch::autograd::impl::gradient_edge(*loss).function;
    if (root) {
      seen.insert(root.get());
      stack.push_back(root.get());
    }
    while (!stack.empty()) {
      auto node = stack.back();
      stack.pop_back();
      for (const auto &edge : node->next_edges()) {
        auto next = edge.function.get();
        if (next != nullptr && seen.insert(next).second) {
          stack.push_back(next);
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      reached[i] = seen.count(hooks[i]->accumulator.get()) > 0;
    }
  });
}

}  // extern "C"
