// Schemas of the classification family and the validation shared by CPU and CUDA.
#include "cls.h"

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
                    double gamma, std::string_view reduction) {
  ClsArgs a;
  a.kind = parse_kind(kind);
  a.reduction = parse_reduction(reduction, kOp);

  check_floating(input, "input", kOp);
  check_floating(target, "target", kOp);
  check_same_device(target, input, "target", "input", kOp);
  TORCH_CHECK_VALUE(target.sizes() == input.sizes(), kOp, ": target of shape ", target.sizes(),
                    " must have the shape of input ", input.sizes());

  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0.0, kOp,
                    ": gamma must be a finite number >= 0, got ", gamma);
  TORCH_CHECK_VALUE(!std::isnan(alpha), kOp, ": alpha must not be NaN");
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
  a.alpha = alpha;
  a.gamma = a.kind == math::ClsKind::kBCE ? 0.0 : gamma;

  a.input = input.contiguous();
  a.target = (target.scalar_type() == input.scalar_type() ? target
                                                           : target.to(input.scalar_type()))
                 .contiguous();
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

OperandDesc prepare_cls_grad(const at::Tensor& grad, const ClsArgs& a) {
  constexpr const char* op = "detloss.cls_backward";
  check_floating(grad, "grad", op);
  check_same_device(grad, a.input, "grad", "input", op);
  if (a.reduction != Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad of a reduced loss must be 0-dim, got shape ",
                      grad.sizes());
  }
  return describe_operand(grad, a.input.sizes(), a.input.scalar_type(), "grad", op);
}

}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(detloss, m) {
  // Fake (meta) kernels and autograd formulas are registered from Python, in this module.
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "cls_loss(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? label, str kind, float alpha, float gamma, str reduction) -> Tensor");
  m.def(
      "cls_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, Tensor? label, str kind, float alpha, float gamma, "
      "str reduction) -> Tensor");
}
