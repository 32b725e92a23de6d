// The gradient in the forward: one protocol for every loss family (csrc/ops/autograd.cpp).
//
//   forward   when an input requires grad and grad mode is on, the family's *_with_grad op
//             evaluates the loss and d(loss)/d(input) at an upstream gradient of 1 ('mean'
//             scale included) in one pass (apex's focal loss does the same); the gradients
//             are kept in the autograd context (keep_grads), not saved for backward: the
//             backward scales them in place. Without grad nothing extra is computed.
//   backward  the first one, without create_graph, takes them out (take_grads: consumed)
//             and scales each by the upstream gradient (scale_by_upstream, csrc/ops/common.h:
//             in place; nothing for an upstream of exactly 1). Any other backward (a retained
//             graph's second one, create_graph) runs the family's recomputing backward op:
//             the same kernel at upstream 1, the same scaling, so the same bits.
//   double    the backward op is analytic, with no derivative of its own: an error.
//
// Also the small helpers every family's autograd and autocast code shares.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <array>
#include <optional>

#include "library.h"

namespace detloss {
namespace protocol {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of an op of this build (name: DETLOSS_OP("...")).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The keys of up to two kept gradients (a box loss has one per box argument).
inline const char* grad_key(size_t i) { return i == 0 ? "grad" : "grad1"; }

// Keeps the forward's gradients, in the order of the differentiable inputs (undefined where
// one was not asked for).
template <size_t N>
void keep_grads(AutogradContext* ctx, const std::array<at::Tensor, N>& grads) {
  static_assert(N <= 2, "up to two differentiable inputs");
  for (size_t i = 0; i < N; ++i)
    if (grads[i].defined()) ctx->saved_data[grad_key(i)] = grads[i];
}

// The kept gradients for the first backward: every one in `needed` must be there and grad
// mode off (no create_graph); they are taken out (a second backward finds none). Otherwise
// nullopt: recompute with the backward op.
template <size_t N>
std::optional<std::array<at::Tensor, N>> take_grads(AutogradContext* ctx,
                                                    const std::array<bool, N>& needed) {
  if (torch::autograd::GradMode::is_enabled()) return std::nullopt;
  for (size_t i = 0; i < N; ++i) {
    const auto it = ctx->saved_data.find(grad_key(i));
    if (needed[i] && (it == ctx->saved_data.end() || !it->second.isTensor())) return std::nullopt;
  }
  std::array<at::Tensor, N> out;
  for (size_t i = 0; i < N; ++i) {
    if (!needed[i]) continue;
    c10::IValue& v = ctx->saved_data[grad_key(i)];
    out[i] = v.toTensor();
    v = c10::IValue();  // consumed: it is scaled in place
  }
  return out;
}

[[noreturn]] inline void no_double_backward(const char* loss) {
  TORCH_CHECK(false, "detloss: double backward through ", loss, " is not supported (the "
                     "backward op is analytic and has no derivative of its own)");
}

// The losses are differentiated with respect to their predictions only: an operand that
// requires grad (in grad mode) is an error saying so.
inline void check_detached(const std::optional<at::Tensor>& t, const char* name,
                           const char* why, const char* tail = "") {
  TORCH_CHECK(!(t.has_value() && t->defined() && t->requires_grad()), "detloss: ", name,
              " requires grad, but ", why, "; pass ", name, ".detach()", tail);
}

}  // namespace protocol
}  // namespace detloss
