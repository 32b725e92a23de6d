// The classification family (bce, focal, qfl, vfl): validated, device-independent
// arguments, and the device entry points that csrc/cpu and csrc/cuda implement.
//
// Two target forms, one op:
// - dense: `target` floating, shaped like `input`;
// - index: `target` integer (int32/int64), shaped `input.shape[:-1]`: the class of each
//   anchor over the last dim of `input` (C classes). Class c of anchor a has target
//   score[a] (1 without score) when label[a] == c, else 0; label == ignore_index: the
//   anchor has no loss, no gradient and is not counted by 'mean'; any other label outside
//   [0, C) (C, -1, ...) is background. No [..., C] target is ever built.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "../math/cls.h"
#include "common.h"

namespace detloss {

struct ClsArgs {
  at::Tensor input;   // contiguous (or class-major, see below)
  at::Tensor target;  // dense: contiguous, input's dtype; index: undefined
  OperandDesc weight, pos_weight, label;
  math::ClsKind kind = math::ClsKind::kBCE;
  double alpha = -1.0;
  double gamma = 0.0;
  double smoothing = 0.0;
  bool use_alpha = false;
  Reduction reduction = Reduction::kMean;

  // index form
  bool index = false;
  at::Tensor labels;  // int64, contiguous, input.numel() / C values
  at::Tensor score;   // input's dtype, contiguous, like labels; or undefined (score 1)
  int64_t classes = 1;
  int64_t ignore_index = -100;
  // class-major logits (index form, no weight/pos_weight): input is a [..., A, C] view of a
  // contiguous [..., C, A] tensor (a detection head's layout, permuted), read in place: the
  // loss and the gradient take the same layout, so neither direction copies. inner = A.
  bool class_major = false;
  int64_t inner = 1;
  // 'mean' of the index form divides by C x (non-ignored anchors): counted on the host
  // for CPU tensors (mean_count), on the device for CUDA ones (see cls_kernel.cu)
  int64_t mean_count = -1;

  int64_t numel() const { return input.numel(); }
  template <typename S>
  math::ClsConfig<S> config() const {
    math::ClsConfig<S> c{static_cast<S>(alpha), static_cast<S>(gamma), use_alpha,
                         math::pow_mode_for(gamma)};
    c.smoothing = static_cast<S>(smoothing);
    return c;
  }
};

// Validates everything the schema cannot (dtypes, devices, shapes, value ranges) with
// errors that name the argument, then makes the tensors kernel-ready.
ClsArgs prepare_cls(const at::Tensor& input, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& pos_weight,
                    const std::optional<at::Tensor>& label, std::string_view kind, double alpha,
                    double gamma, std::string_view reduction,
                    const std::optional<at::Tensor>& score, double smoothing,
                    int64_t ignore_index);

// A tensor for per-element results (the 'none' loss, the gradient) in input's layout.
at::Tensor cls_like_input(const ClsArgs& a);

// Device kernels. forward: the loss, shaped like input for 'none', 0-dim otherwise.
// forward_grad: the loss (undefined when `with_loss` is false) and d(loss)/d(input) for an
// upstream gradient of 1 ('mean' scale included), contiguous, input's dtype: the backward
// only multiplies it by the upstream gradient.
at::Tensor cls_forward_cpu(const ClsArgs& a);
std::tuple<at::Tensor, at::Tensor> cls_forward_grad_cpu(const ClsArgs& a, bool with_loss);
at::Tensor cls_forward_cuda(const ClsArgs& a);
std::tuple<at::Tensor, at::Tensor> cls_forward_grad_cuda(const ClsArgs& a, bool with_loss);

// The schema-shaped entry points each device registers.
#define DETLOSS_CLS_PARAMS                                                               \
  const at::Tensor &input, const at::Tensor &target, const std::optional<at::Tensor>&weight, \
      const std::optional<at::Tensor>&pos_weight, const std::optional<at::Tensor>&label,     \
      c10::string_view kind, double alpha, double gamma, c10::string_view reduction,       \
      const std::optional<at::Tensor>&score, double smoothing, int64_t ignore_index
#define DETLOSS_CLS_ARGS                                                                     \
  input, target, weight, pos_weight, label, kind, alpha, gamma, reduction, score, smoothing, \
      ignore_index

inline ClsArgs prepare_cls_entry(DETLOSS_CLS_PARAMS) {
  return prepare_cls(input, target, weight, pos_weight, label, sv(kind), alpha, gamma,
                     sv(reduction), score, smoothing, ignore_index);
}

template <at::Tensor (*Forward)(const ClsArgs&)>
at::Tensor cls_loss_entry(DETLOSS_CLS_PARAMS) {
  return Forward(prepare_cls_entry(DETLOSS_CLS_ARGS));
}

template <std::tuple<at::Tensor, at::Tensor> (*ForwardGrad)(const ClsArgs&, bool)>
std::tuple<at::Tensor, at::Tensor> cls_loss_with_grad_entry(DETLOSS_CLS_PARAMS) {
  return ForwardGrad(prepare_cls_entry(DETLOSS_CLS_ARGS), true);
}

// The recomputing backward: the gradient at upstream 1, then scaled as a forward-computed
// one is (scale_by_upstream), in place.
void check_cls_grad(const at::Tensor& grad, const ClsArgs& a);
template <std::tuple<at::Tensor, at::Tensor> (*ForwardGrad)(const ClsArgs&, bool)>
at::Tensor cls_backward_entry(const at::Tensor& grad, DETLOSS_CLS_PARAMS) {
  const ClsArgs a = prepare_cls_entry(DETLOSS_CLS_ARGS);
  check_cls_grad(grad, a);
  return scale_by_upstream(std::get<1>(ForwardGrad(a, false)), grad, a.reduction, false, true);
}

}  // namespace detloss
