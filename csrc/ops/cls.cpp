// Schemas of the classification family and the validation shared by CPU and CUDA.
#include "cls.h"

#include <ATen/ExpandUtils.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
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
                    double gamma, std::string_view reduction,
                    const std::optional<at::Tensor>& score, double smoothing,
                    int64_t ignore_index) {
  ClsArgs a;
  a.kind = parse_kind(kind);
  a.reduction = parse_reduction(reduction, kOp);

  check_floating(input, "input", kOp);
  const auto ts = target.scalar_type();
  a.index = ts == at::kLong || ts == at::kInt;
  TORCH_CHECK_TYPE(a.index || ts == at::kFloat || ts == at::kDouble || ts == at::kHalf ||
                       ts == at::kBFloat16,
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
                    ": label_smoothing must be in [0, 1], got ", smoothing);
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

// ---------------------------------------------------------------- autograd and autocast
// In C++ rather than torch.library.register_autograd: the Python route measured ~70 us of
// overhead per forward+backward here, 2.5x torch's whole BCE at small sizes, where a GPU
// loss is launch-bound. Fake (meta) kernels stay in Python (detloss_cuda/_ops.py).
//
// Gradient in the forward: when input requires grad (and grad mode is on), the forward
// runs cls_loss_with_grad, which evaluates the stable formulas once for the loss and
// d(loss)/d(input) (apex's contrib focal loss does the same), and the backward only scales
// that gradient by the upstream one, in place (scale_by_upstream). It is consumed by the first
// backward; a second one (retain_graph=True) recomputes it with cls_backward, which runs
// the same kernel and the same scaling: the same bits. Without grad nothing extra is
// computed or allocated.
namespace detloss {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

using LossSig = at::Tensor(DETLOSS_CLS_PARAMS);
using LossGradSig = std::tuple<at::Tensor, at::Tensor>(DETLOSS_CLS_PARAMS);
using BackwardSig = at::Tensor(const at::Tensor&, DETLOSS_CLS_PARAMS);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

at::Tensor call_cls_loss(DETLOSS_CLS_PARAMS) {
  static const auto op = find_op<LossSig>(DETLOSS_OP("cls_loss"));
  return op.call(DETLOSS_CLS_ARGS);
}

void check_no_grad(const std::optional<at::Tensor>& t, const char* name) {
  TORCH_CHECK(!(t.has_value() && t->defined() && t->requires_grad()), "detloss: ", name,
              " requires grad, but these losses are differentiated with respect to input "
              "only; pass ", name, ".detach() (a detached ", name,
              " is what ultralytics, mmdet and torchvision use)");
}

class ClsBackwardFunction : public torch::autograd::Function<ClsBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad, DETLOSS_CLS_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<BackwardSig>(DETLOSS_OP("cls_backward"));
    return op.call(grad, DETLOSS_CLS_ARGS);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "detloss: double backward through cls_loss is not supported (the "
                       "backward op is analytic and has no derivative of its own)");
  }
};

class ClsLossFunction : public torch::autograd::Function<ClsLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, bool with_grad, DETLOSS_CLS_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out;
    if (with_grad) {
      static const auto op = find_op<LossGradSig>(DETLOSS_OP("cls_loss_with_grad"));
      at::Tensor g;
      std::tie(out, g) = op.call(DETLOSS_CLS_ARGS);
      ctx->saved_data["grad"] = g;  // not save_for_backward: it is scaled in place
    } else {
      out = call_cls_loss(DETLOSS_CLS_ARGS);
    }
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()),
                            pos_weight.value_or(at::Tensor()), label.value_or(at::Tensor()),
                            score.value_or(at::Tensor())});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["smoothing"] = smoothing;
    ctx->saved_data["ignore_index"] = ignore_index;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    at::Tensor grad_input;
    const auto pre = ctx->saved_data.find("grad");
    if (pre != ctx->saved_data.end() && pre->second.isTensor() &&
        !torch::autograd::GradMode::is_enabled()) {
      const at::Tensor g = pre->second.toTensor();
      pre->second = c10::IValue();  // consumed (scaled in place)
      grad_input = scale_by_upstream(g, grads[0], parse_reduction(reduction, "detloss.cls_loss"),
                                     /*rows=*/false, /*in_place=*/true);
    } else {  // a second backward of a retained graph, or create_graph=True
      const auto s = ctx->get_saved_variables();
      const std::string kind = ctx->saved_data["kind"].toStringRef();
      grad_input = ClsBackwardFunction::apply(
          grads[0], s[0], s[1], opt(s[2]), opt(s[3]), opt(s[4]), kind,
          ctx->saved_data["alpha"].toDouble(), ctx->saved_data["gamma"].toDouble(), reduction,
          opt(s[5]), ctx->saved_data["smoothing"].toDouble(),
          ctx->saved_data["ignore_index"].toInt());
    }
    // one entry per forward argument (with_grad first): only input is differentiable
    variable_list out(13);
    out[1] = grad_input;
    return out;
  }
};

at::Tensor cls_loss_autograd(DETLOSS_CLS_PARAMS) {
  const bool grad_mode = torch::autograd::GradMode::is_enabled();
  if (grad_mode) {  // (forward() itself runs without grad)
    check_no_grad(target, "target");
    check_no_grad(weight, "weight");
    check_no_grad(pos_weight, "pos_weight");
    check_no_grad(score, "score");
  }
  return ClsLossFunction::apply(grad_mode && input.requires_grad(), DETLOSS_CLS_ARGS);
}

at::Tensor cls_backward_autograd(const at::Tensor& grad, DETLOSS_CLS_PARAMS) {
  return ClsBackwardFunction::apply(grad, DETLOSS_CLS_ARGS);
}

// Under autocast torch runs its own BCE-with-logits in float32 (and returns float32); so do
// we, so that swapping the import keeps the numbers and an fp16 sum cannot overflow.
// (Integer class-index targets are not cast.)
template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor cls_loss_autocast(DETLOSS_CLS_PARAMS) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const auto f = [](const at::Tensor& t) { return at::autocast::cached_cast(at::kFloat, t, device); };
  const auto fo = [](const std::optional<at::Tensor>& t) {
    return at::autocast::cached_cast(at::kFloat, t, device);
  };
  return call_cls_loss(f(input), f(target), fo(weight), fo(pos_weight), label, kind, alpha,
                       gamma, reduction, fo(score), smoothing, ignore_index);
}

}  // namespace
}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  // Fake (meta) kernels are registered from Python, in this module.
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "cls_loss(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? label, str kind, float alpha, float gamma, str reduction, Tensor? score=None, "
      "float smoothing=0.0, int ignore_index=-100) -> Tensor");
  // the loss and d(loss)/d(input) for an upstream gradient of 1, in one pass
  m.def(
      "cls_loss_with_grad(Tensor input, Tensor target, Tensor? weight, Tensor? pos_weight, "
      "Tensor? label, str kind, float alpha, float gamma, str reduction, Tensor? score=None, "
      "float smoothing=0.0, int ignore_index=-100) -> (Tensor loss, Tensor grad)");
  m.def(
      "cls_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, "
      "Tensor? pos_weight, Tensor? label, str kind, float alpha, float gamma, "
      "str reduction, Tensor? score=None, float smoothing=0.0, int ignore_index=-100) -> Tensor");
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, Autograd, m) {
  m.impl("cls_loss", &detloss::cls_loss_autograd);
  m.impl("cls_backward", &detloss::cls_backward_autograd);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCUDA, m) {
  m.impl("cls_loss",
         &detloss::cls_loss_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCPU, m) {
  m.impl("cls_loss",
         &detloss::cls_loss_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}
