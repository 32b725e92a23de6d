// Schemas of the classification family and the validation shared by CPU and CUDA (autograd:
// csrc/ops/autograd.cpp; autocast: csrc/ops/autocast.cpp).
#include "cls.h"

#include <ATen/ExpandUtils.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <string>

namespace detloss {
namespace {

constexpr const char* kOp = "detloss.cls_loss";

math::ClsKind parse_kind(std::string_view kind) {
  if (kind == "bce") return math::ClsKind::kBCE;
  if (kind == "focal") return math::ClsKind::kFocal;
  if (kind == "qfl") return math::ClsKind::kQFL;
  if (kind == "vfl") return math::ClsKind::kVFL;
  TORCH_CHECK_VALUE(false, kOp, ": kind must be one of 'bce', 'focal', 'qfl', 'vfl', got '",
                    std::string(kind), "'");
}

}  // namespace

ClsArgs prepare_cls(const at::Tensor& input, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& pos_weight,
                    const std::optional<at::Tensor>& label, std::string_view kind, double alpha,
                    double gamma, std::string_view reduction,
                    const std::optional<at::Tensor>& score, double smoothing,
                    int64_t ignore_index) {
  ClsArgs a;
  a.kind = parse_kind(kind);
  a.reduction = parse_reduction(reduction, kOp);

  check_floating(input, "input", kOp);
  const auto ts = target.scalar_type();
  a.index = ts == at::kLong || ts == at::kInt;
  TORCH_CHECK_TYPE(a.index || is_floating(ts),
                   kOp, ": target must be floating (a dense target shaped like input) or int32/"
                   "int64 (class indices shaped input.shape[:-1]), got ", ts);
  check_same_device(target, input, "target", "input", kOp);
  const bool has_score = score.has_value() && score->defined();
  if (a.index) {
    TORCH_CHECK_VALUE(input.dim() >= 1 && target.sizes() == input.sizes().slice(0, input.dim() - 1),
                      kOp, ": target holds class indices (", ts, "), so its shape must be "
                      "input.shape[:-1] = ", input.sizes().slice(0, std::max<int64_t>(input.dim() - 1, 0)),
                      ", got ", target.sizes(),
                      input.dim() >= 1 && target.sizes() == input.sizes()
                          ? " (a dense 0/1 target must be a floating tensor)" : "");
    TORCH_CHECK_VALUE(!(label.has_value() && label->defined()), kOp,
                      ": label must be None with class-index targets (the labelled classes are "
                      "the positives)");
    if (has_score) {
      check_floating(*score, "score", kOp);
      check_same_device(*score, input, "score", "input", kOp);
      TORCH_CHECK_VALUE(score->sizes() == target.sizes(), kOp, ": score of shape ",
                        score->sizes(), " must have the shape of target ", target.sizes(),
                        " (one soft target per anchor)");
    }
    a.classes = input.size(-1);
    a.ignore_index = ignore_index;
    a.labels = target.scalar_type() == at::kLong ? target.contiguous()
                                                 : target.to(at::kLong).contiguous();
    if (has_score) {
      a.score = (score->scalar_type() == input.scalar_type() ? *score
                                                               : score->to(input.scalar_type()))
                    .contiguous();
    }
    if (a.reduction == Reduction::kMean && input.device().is_cpu()) {
      const int64_t* l = a.labels.const_data_ptr<int64_t>();
      int64_t count = 0;
      for (int64_t k = 0, m = a.labels.numel(); k < m; ++k) count += l[k] != ignore_index;
      a.mean_count = count * a.classes;
    }
  } else {
    TORCH_CHECK_VALUE(target.sizes() == input.sizes(), kOp, ": target of shape ",
                      target.sizes(), " must have the shape of input ", input.sizes(),
                      " (or, holding int64 class indices, input.shape[:-1])");
    TORCH_CHECK_VALUE(!has_score, kOp, ": score is only used with class-index targets (a "
                      "dense target already holds the soft scores)");
    a.target = (ts == input.scalar_type() ? target : target.to(input.scalar_type())).contiguous();
  }

  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0.0, kOp,
                    ": gamma must be a finite number >= 0, got ", gamma);
  TORCH_CHECK_VALUE(!std::isnan(alpha), kOp, ": alpha must not be NaN");
  TORCH_CHECK_VALUE(std::isfinite(smoothing) && smoothing >= 0.0 && smoothing <= 1.0, kOp,
                    ": label_smoothing must be a number in [0, 1], got ", smoothing);
  a.smoothing = smoothing;
  if (a.kind == math::ClsKind::kVFL) {
    TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0.0, kOp,
                      ": alpha (the weight of negatives) must be a finite number >= 0 for vfl, "
                      "got ", alpha);
    a.use_alpha = true;
  } else if (a.kind != math::ClsKind::kBCE) {
    // alpha < 0 disables alpha_t (torchvision's convention; None maps to -1 in Python)
    TORCH_CHECK_VALUE(alpha <= 1.0, kOp,
                      ": alpha must be in [0, 1], or negative to disable the alpha_t "
                      "balance, got ", alpha);
    a.use_alpha = alpha >= 0.0;
  }
  check_representable(alpha, input.scalar_type(), "alpha", kOp);
  check_representable(gamma, input.scalar_type(), "gamma", kOp);
  a.alpha = alpha;
  a.gamma = a.kind == math::ClsKind::kBCE ? 0.0 : gamma;

  const bool operands = (weight.has_value() && weight->defined()) ||
                        (pos_weight.has_value() && pos_weight->defined());
  if (a.index && !operands && input.dim() >= 2 && !input.is_contiguous() &&
      input.transpose(-1, -2).is_contiguous()) {
    a.class_major = true;  // read in place: element order in memory is [..., C, A]
    a.inner = input.size(-2);
    a.input = input;
  } else {
    a.input = input.contiguous();
  }
  const auto shape = input.sizes();
  const auto dtype = input.scalar_type();
  if (weight.has_value() && weight->defined()) {
    check_floating(*weight, "weight", kOp);
    check_same_device(*weight, input, "weight", "input", kOp);
  }
  if (pos_weight.has_value() && pos_weight->defined()) {
    check_floating(*pos_weight, "pos_weight", kOp);
    check_same_device(*pos_weight, input, "pos_weight", "input", kOp);
  }
  if (label.has_value() && label->defined()) {
    TORCH_CHECK_VALUE(a.kind == math::ClsKind::kVFL, kOp,
                      ": label is only used by kind='vfl', got kind='", std::string(kind), "'");
    TORCH_CHECK_TYPE(label->scalar_type() == at::kBool, kOp,
                     ": label must be a bool tensor (True marks positives), got ",
                     label->scalar_type());
    check_same_device(*label, input, "label", "input", kOp);
  }
  a.weight = describe_operand(weight, shape, dtype, "weight", kOp);
  a.pos_weight = describe_operand(pos_weight, shape, dtype, "pos_weight", kOp);
  a.label = describe_operand(label, shape, at::kBool, "label", kOp);
  return a;
}

at::Tensor cls_like_input(const ClsArgs& a) {
  return a.class_major ? at::empty_strided(a.input.sizes(), a.input.strides(), a.input.options())
                       : at::empty(a.input.sizes(), a.input.options());
}

void check_cls_grad(const at::Tensor& grad, const ClsArgs& a) {
  constexpr const char* op = "detloss.cls_backward";
  check_floating(grad, "grad", op);
  check_same_device(grad, a.input, "grad", "input", op);
  if (a.reduction != Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad of a reduced loss must be 0-dim, got shape ",
                      grad.sizes());
  } else {
    TORCH_CHECK_VALUE(at::is_expandable_to(grad.sizes(), a.input.sizes()), op, ": grad of shape ",
                      grad.sizes(), " is not broadcastable to the loss shape ", a.input.sizes());
  }
}

}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  // Fake (meta) kernels are registered from Python, in this module.
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "cls_loss(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? label, str kind, float alpha, float gamma, str reduction, Tensor? score=None, "
      "float label_smoothing=0.0, int ignore_index=-100) -> Tensor");
  // the loss and d(loss)/d(input) for an upstream gradient of 1, in one pass
  m.def(
      "cls_loss_with_grad(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? label, str kind, float alpha, float gamma, str reduction, Tensor? score=None, "
      "float label_smoothing=0.0, int ignore_index=-100) -> (Tensor loss, Tensor grad)");
  m.def(
      "cls_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, Tensor? label, str kind, float alpha, float gamma, "
      "str reduction, Tensor? score=None, float label_smoothing=0.0, int ignore_index=-100) -> Tensor");
}
