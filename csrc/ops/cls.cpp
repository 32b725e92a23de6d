// Schemas of the classification family and the validation shared by CPU and CUDA.
#include "cls.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
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

// ---------------------------------------------------------------- autograd and autocast
// In C++ rather than torch.library.register_autograd: the Python route measured ~70 us of
// overhead per forward+backward here, 2.5x torch's whole BCE at small sizes, where a GPU
// loss is launch-bound. Fake (meta) kernels stay in Python (detloss_cuda/_ops.py).
namespace detloss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

at::Tensor call_cls_loss(const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& pos_weight,
                         const std::optional<at::Tensor>& label, c10::string_view kind,
                         double alpha, double gamma, c10::string_view reduction) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("detloss::cls_loss", "")
                             .typed<decltype(cls_loss_entry<cls_forward_cpu>)>();
  return op.call(input, target, weight, pos_weight, label, kind, alpha, gamma, reduction);
}

at::Tensor call_cls_backward(const at::Tensor& grad, const at::Tensor& input,
                             const at::Tensor& target, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& pos_weight,
                             const std::optional<at::Tensor>& label, c10::string_view kind,
                             double alpha, double gamma, c10::string_view reduction) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("detloss::cls_backward", "")
                             .typed<decltype(cls_backward_entry<cls_backward_cpu>)>();
  return op.call(grad, input, target, weight, pos_weight, label, kind, alpha, gamma, reduction);
}

void check_no_grad(const std::optional<at::Tensor>& t, const char* name) {
  TORCH_CHECK(!(t.has_value() && t->defined() && t->requires_grad()), "detloss: ", name,
              " requires grad, but these losses are differentiated with respect to input "
              "only; pass ", name, ".detach() (a detached ", name,
              " is what ultralytics, mmdet and torchvision use)");
}

class ClsBackwardFunction : public torch::autograd::Function<ClsBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& pos_weight,
                            const std::optional<at::Tensor>& label, c10::string_view kind,
                            double alpha, double gamma, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_cls_backward(grad, input, target, weight, pos_weight, label, kind, alpha,
                             gamma, reduction);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "detloss: double backward through cls_loss is not supported (the "
                       "backward op is analytic and has no derivative of its own)");
  }
};

class ClsLossFunction : public torch::autograd::Function<ClsLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& pos_weight,
                            const std::optional<at::Tensor>& label, c10::string_view kind,
                            double alpha, double gamma, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out = call_cls_loss(input, target, weight, pos_weight, label, kind, alpha, gamma,
                                   reduction);
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()),
                            pos_weight.value_or(at::Tensor()), label.value_or(at::Tensor())});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["reduction"] = std::string(reduction);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::string kind = ctx->saved_data["kind"].toStringRef();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    at::Tensor grad_input = ClsBackwardFunction::apply(
        grads[0], s[0], s[1], opt(s[2]), opt(s[3]), opt(s[4]), kind,
        ctx->saved_data["alpha"].toDouble(), ctx->saved_data["gamma"].toDouble(), reduction);
    // one entry per forward argument: only input is differentiable
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor cls_loss_autograd(const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& pos_weight,
                             const std::optional<at::Tensor>& label, c10::string_view kind,
                             double alpha, double gamma, c10::string_view reduction) {
  if (torch::autograd::GradMode::is_enabled()) {  // (forward() itself runs without grad)
    check_no_grad(target, "target");
    check_no_grad(weight, "weight");
    check_no_grad(pos_weight, "pos_weight");
  }
  return ClsLossFunction::apply(input, target, weight, pos_weight, label, kind, alpha, gamma,
                                reduction);
}

at::Tensor cls_backward_autograd(const at::Tensor& grad, const at::Tensor& input,
                                 const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& pos_weight,
                                 const std::optional<at::Tensor>& label, c10::string_view kind,
                                 double alpha, double gamma, c10::string_view reduction) {
  return ClsBackwardFunction::apply(grad, input, target, weight, pos_weight, label, kind, alpha,
                                    gamma, reduction);
}

// Under autocast torch runs its own BCE-with-logits in float32 (and returns float32); so do
// we, so that swapping the import keeps the numbers and an fp16 sum cannot overflow.
template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor cls_loss_autocast(const at::Tensor& input, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& pos_weight,
                             const std::optional<at::Tensor>& label, c10::string_view kind,
                             double alpha, double gamma, c10::string_view reduction) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const auto f = [](const at::Tensor& t) { return at::autocast::cached_cast(at::kFloat, t, device); };
  const auto fo = [](const std::optional<at::Tensor>& t) {
    return at::autocast::cached_cast(at::kFloat, t, device);
  };
  return call_cls_loss(f(input), f(target), fo(weight), fo(pos_weight), label, kind, alpha,
                       gamma, reduction);
}

}  // namespace
}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(detloss, m) {
  // Fake (meta) kernels are registered from Python, in this module.
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "cls_loss(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? label, str kind, float alpha, float gamma, str reduction) -> Tensor");
  m.def(
      "cls_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, Tensor? label, str kind, float alpha, float gamma, "
      "str reduction) -> Tensor");
}

TORCH_LIBRARY_IMPL(detloss, Autograd, m) {
  m.impl("cls_loss", &detloss::cls_loss_autograd);
  m.impl("cls_backward", &detloss::cls_backward_autograd);
}

TORCH_LIBRARY_IMPL(detloss, AutocastCUDA, m) {
  m.impl("cls_loss",
         &detloss::cls_loss_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(detloss, AutocastCPU, m) {
  m.impl("cls_loss",
         &detloss::cls_loss_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}
