// The classification family (bce, focal, qfl, vfl): validated, device-independent
// arguments, and the device entry points that csrc/cpu and csrc/cuda implement.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "../math/cls.h"
#include "common.h"

namespace detloss {

struct ClsArgs {
  at::Tensor input;   // contiguous
  at::Tensor target;  // contiguous, input's dtype
  OperandDesc weight, pos_weight, label;
  math::ClsKind kind = math::ClsKind::kBCE;
  double alpha = -1.0;
  double gamma = 0.0;
  bool use_alpha = false;
  Reduction reduction = Reduction::kMean;

  int64_t numel() const { return input.numel(); }
  template <typename S>
  math::ClsConfig<S> config() const {
    return {static_cast<S>(alpha), static_cast<S>(gamma), use_alpha, math::pow_mode_for(gamma)};
  }
};

// Validates everything the schema cannot (dtypes, devices, shapes, value ranges) with
// errors that name the argument, then makes the tensors kernel-ready.
ClsArgs prepare_cls(const at::Tensor& input, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& pos_weight,
                    const std::optional<at::Tensor>& label, std::string_view kind, double alpha,
                    double gamma, std::string_view reduction);

// The upstream gradient of cls_loss, described as an operand over the loss elements:
// a 0-dim tensor for 'mean'/'sum', broadcastable to input for 'none' (an expanded
// gradient such as that of loss.sum() is read in place, not materialised).
OperandDesc prepare_cls_grad(const at::Tensor& grad, const ClsArgs& a);

// Device kernels. forward: the loss, shaped like input for 'none', 0-dim otherwise.
// backward: d(loss)/d(input), contiguous, input's dtype.
at::Tensor cls_forward_cpu(const ClsArgs& a);
at::Tensor cls_backward_cpu(const ClsArgs& a, const OperandDesc& grad);
at::Tensor cls_forward_cuda(const ClsArgs& a);
at::Tensor cls_backward_cuda(const ClsArgs& a, const OperandDesc& grad);

// The schema-shaped entry points each device registers.
template <at::Tensor (*Forward)(const ClsArgs&)>
at::Tensor cls_loss_entry(const at::Tensor& input, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& pos_weight,
                          const std::optional<at::Tensor>& label, c10::string_view kind,
                          double alpha, double gamma, c10::string_view reduction) {
  return Forward(prepare_cls(input, target, weight, pos_weight, label,
                             std::string_view(kind.data(), kind.size()), alpha, gamma,
                             std::string_view(reduction.data(), reduction.size())));
}

template <at::Tensor (*Backward)(const ClsArgs&, const OperandDesc&)>
at::Tensor cls_backward_entry(const at::Tensor& grad, const at::Tensor& input,
                              const at::Tensor& target, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& pos_weight,
                              const std::optional<at::Tensor>& label, c10::string_view kind,
                              double alpha, double gamma, c10::string_view reduction) {
  const ClsArgs a = prepare_cls(input, target, weight, pos_weight, label,
                                std::string_view(kind.data(), kind.size()), alpha, gamma,
                                std::string_view(reduction.data(), reduction.size()));
  return Backward(a, prepare_cls_grad(grad, a));
}

}  // namespace detloss
