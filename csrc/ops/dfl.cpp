// Schemas of the distribution family, the validation shared by CPU and CUDA, autograd and
// autocast.
#include "dfl.h"

#include <ATen/ExpandUtils.h>  // at::is_expandable_to
#include <ATen/OpMathType.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace detloss {

DflArgs prepare_dfl(const at::Tensor& pred, const std::optional<at::Tensor>& target,
                    const std::optional<at::Tensor>& weight, std::string_view reduction,
                    const char* op, bool keep_bin_major) {
  DflArgs a;
  a.reduction = parse_reduction(reduction, op);
  const auto s = pred.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
                   op, ": pred must be a floating tensor of bin logits (float32, float64, "
                   "float16 or bfloat16), got ", s);
  TORCH_CHECK_VALUE(pred.dim() >= 1, op, ": pred must have shape [..., R] (R bins), got a 0-dim "
                    "tensor");
  const int64_t bins = pred.size(-1);
  TORCH_CHECK_VALUE(bins >= 2, op, ": DFL needs at least 2 bins, got pred of shape ",
                    pred.sizes());
  TORCH_CHECK_VALUE(bins <= math::kDflMaxBins, op, ": pred's last dim holds the bins, at most ",
                    math::kDflMaxBins, " are supported, got pred of shape ", pred.sizes());
  a.bins = static_cast<int32_t>(bins);
  a.shape.assign(pred.sizes().begin(), pred.sizes().end() - 1);
  a.rows = pred.numel() / bins;
  if (target.has_value()) {
    const at::Tensor& t = *target;
    check_same_device(t, pred, "target", "pred", op);
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()) ||
                         at::isIntegralType(t.scalar_type(), /*includeBool=*/false),
                     op, ": target must be a real tensor of distances in bins, got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(a.shape), op, ": target of shape ",
                      t.sizes(), " must have the leading shape of pred ", pred.sizes(), ", i.e. ",
                      at::IntArrayRef(a.shape));
    // targets stay in opmath (float32 for half/bf16 logits): their fraction is the weight
    const auto tt = at::toOpMathType(s);
    a.target = (t.scalar_type() == tt ? t : t.to(tt)).contiguous();
  }
  if (weight.has_value() && weight->defined()) {
    check_floating(*weight, "weight", op);
    check_same_device(*weight, pred, "weight", "pred", op);
  }
  a.weight = describe_operand(weight, a.shape, s, "weight", op);
  // last: every argument checked before pred is copied (an expanded pred of 2^31 rows with a
  // wrong target would otherwise allocate 137 GB before the shape error)
  a.pred = keep_bin_major && dfl_bin_major_dim(pred) >= 0 ? pred : pred.contiguous();
  return a;
}

void check_dfl_stats(const at::Tensor& stats, DflArgs& a, int64_t per_row, const char* op) {
  const auto tt = at::toOpMathType(a.pred.scalar_type());
  std::vector<int64_t> want(a.shape);
  if (per_row > 1) want.push_back(per_row);
  TORCH_CHECK_VALUE(stats.scalar_type() == tt && stats.sizes() == at::IntArrayRef(want), op,
                    ": stats (the saved statistics) must be ", tt, " of shape ", at::IntArrayRef(want),
                    " (what the forward returned), got ", stats.scalar_type(), " ",
                    stats.sizes());
  check_same_device(stats, a.pred, "stats", "pred", op);
  a.stats = stats.contiguous();
}

void check_dfl_grad(const at::Tensor& grad, const DflArgs& a, const char* op) {
  check_floating(grad, "grad", op);
  check_same_device(grad, a.pred, "grad", "pred", op);
  if (a.reduction != Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad of a reduced loss must be 0-dim, got shape ",
                      grad.sizes());
  } else {
    TORCH_CHECK_VALUE(at::is_expandable_to(grad.sizes(), a.shape), op, ": grad of shape ",
                      grad.sizes(), " is not broadcastable to the loss shape ",
                      at::IntArrayRef(a.shape));
  }
}

OperandDesc prepare_dfl_grad(const at::Tensor& grad, const DflArgs& a, const char* op) {
  check_dfl_grad(grad, a, op);
  return describe_operand(grad, a.shape, a.pred.scalar_type(), "grad", op);
}

// ---------------------------------------------------------------- autograd and autocast
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using Pair = std::tuple<at::Tensor, at::Tensor>;
using LossSig = Pair(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                     c10::string_view);
using LossBwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const std::optional<at::Tensor>&,
                              c10::string_view);
using IntegralSig = Pair(const at::Tensor&);
using IntegralBwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using LossGradSig = Triple(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           c10::string_view);

Pair call_dfl_loss(const at::Tensor& p, const at::Tensor& t, const std::optional<at::Tensor>& w,
                   c10::string_view r) {
  static const auto op = find_op<LossSig>(DETLOSS_OP("dfl_loss"));
  return op.call(p, t, w, r);
}

template <const char* kName>
[[noreturn]] variable_list no_double_backward() {
  TORCH_CHECK(false, "detloss: double backward through ", kName, " is not supported (the "
                     "backward op is analytic and has no derivative of its own)");
}

constexpr char kDflName[] = "dfl_loss";
constexpr char kIntegralName[] = "dfl_integral";

class DflBackwardFunction : public torch::autograd::Function<DflBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& g, const at::Tensor& p,
                            const at::Tensor& t, const at::Tensor& lse,
                            const std::optional<at::Tensor>& w, c10::string_view r) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<LossBwdSig>(DETLOSS_OP("dfl_backward"));
    return op.call(g, p, t, lse, w, r);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    no_double_backward<kDflName>();
  }
};

// Gradient in the forward (as for every loss here, csrc/ops/cls.cpp): when pred requires
// grad, dfl_loss_with_grad writes the gradient for an upstream gradient of 1 in the same pass
// (CPU: each row's backward while it is in cache, which saved a whole pass over memory, the
// separate backward costing as much as torch's own z.exp(); CUDA: from the row's max and sum
// in registers), and the backward scales it in place: nothing for loss.backward(). A second
// backward of a retained graph, and create_graph, run dfl_backward: from the stats, the same
// arithmetic at upstream 1, then the same scaling: the same bits.
class DflLossFunction : public torch::autograd::Function<DflLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, bool with_grad, const at::Tensor& p,
                               const at::Tensor& t, const std::optional<at::Tensor>& w,
                               c10::string_view r) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out, lse;
    if (with_grad) {
      static const auto op = find_op<LossGradSig>(DETLOSS_OP("dfl_loss_with_grad"));
      at::Tensor grad;
      std::tie(out, lse, grad) = op.call(p, t, w, r);
      ctx->saved_data["grad"] = grad;  // not save_for_backward: it is scaled in place
    } else {
      std::tie(out, lse) = call_dfl_loss(p, t, w, r);
    }
    ctx->save_for_backward({p, t, lse, w.value_or(at::Tensor())});
    ctx->saved_data["reduction"] = std::string(r);
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string r = ctx->saved_data["reduction"].toStringRef();
    const auto pre = ctx->saved_data.find("grad");
    if (pre != ctx->saved_data.end() && pre->second.isTensor() &&
        !torch::autograd::GradMode::is_enabled()) {
      const at::Tensor g = pre->second.toTensor();
      pre->second = c10::IValue();  // consumed
      return {at::Tensor(),
              scale_by_upstream(g, grads[0], parse_reduction(r, "detloss.dfl_loss"), true, true),
              at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const auto s = ctx->get_saved_variables();
    std::optional<at::Tensor> w;
    if (s[3].defined()) w = s[3];
    return {at::Tensor(), DflBackwardFunction::apply(grads[0], s[0], s[1], s[2], w, r),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class IntegralBackwardFunction : public torch::autograd::Function<IntegralBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& g, const at::Tensor& p,
                            const at::Tensor& stats) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<IntegralBwdSig>(DETLOSS_OP("dfl_integral_backward"));
    return op.call(g, p, stats);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    no_double_backward<kIntegralName>();
  }
};

class IntegralFunction : public torch::autograd::Function<IntegralFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& p) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<IntegralSig>(DETLOSS_OP("dfl_integral"));
    auto [out, stats] = op.call(p);
    ctx->save_for_backward({p, stats});
    ctx->mark_non_differentiable({stats});
    return {out, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    return {IntegralBackwardFunction::apply(grads[0], s[0], s[1])};
  }
};

Pair dfl_loss_autograd(const at::Tensor& p, const at::Tensor& t,
                       const std::optional<at::Tensor>& w, c10::string_view r) {
  if (torch::autograd::GradMode::is_enabled()) {
    TORCH_CHECK(!t.requires_grad(), "detloss: target requires grad, but DFL has no gradient "
                "with respect to its target; pass target.detach()");
    TORCH_CHECK(!(w.has_value() && w->defined() && w->requires_grad()),
                "detloss: weight requires grad; pass weight.detach()");
  }
  auto r2 = DflLossFunction::apply(torch::autograd::GradMode::is_enabled() && p.requires_grad(),
                                   p, t, w, r);
  return {r2[0], r2[1]};
}
at::Tensor dfl_backward_autograd(const at::Tensor& g, const at::Tensor& p, const at::Tensor& t,
                                 const at::Tensor& lse, const std::optional<at::Tensor>& w,
                                 c10::string_view r) {
  return DflBackwardFunction::apply(g, p, t, lse, w, r);
}
Pair dfl_integral_autograd(const at::Tensor& p) {
  auto r = IntegralFunction::apply(p);
  return {r[0], r[1]};
}
at::Tensor dfl_integral_backward_autograd(const at::Tensor& g, const at::Tensor& p,
                                          const at::Tensor& stats) {
  return IntegralBackwardFunction::apply(g, p, stats);
}

// Under autocast torch runs cross_entropy and softmax in float32; so do these.
template <c10::DispatchKey key, c10::DeviceType device>
Pair dfl_loss_autocast(const at::Tensor& p, const at::Tensor& t,
                       const std::optional<at::Tensor>& w, c10::string_view r) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  return call_dfl_loss(at::autocast::cached_cast(at::kFloat, p, device), t,
                       at::autocast::cached_cast(at::kFloat, w, device), r);
}
template <c10::DispatchKey key, c10::DeviceType device>
Pair dfl_integral_autocast(const at::Tensor& p) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op = find_op<IntegralSig>(DETLOSS_OP("dfl_integral"));
  return op.call(at::autocast::cached_cast(at::kFloat, p, device));
}

}  // namespace
}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  m.set_python_module("detloss_cuda._ops");
  // The forwards also return per-row statistics (opmath) that make the backward one pass.
  m.def(
      "dfl_loss(Tensor pred, Tensor target, Tensor? weight, str reduction) "
      "-> (Tensor loss, Tensor stats)");
  m.def(
      "dfl_backward(Tensor grad, Tensor pred, Tensor target, Tensor stats, Tensor? weight, "
      "str reduction) -> Tensor");
  m.def(
      "dfl_loss_with_grad(Tensor pred, Tensor target, Tensor? weight, str reduction) "
      "-> (Tensor loss, Tensor stats, Tensor grad)");
  m.def("dfl_integral(Tensor pred) -> (Tensor integral, Tensor stats)");
  m.def("dfl_integral_backward(Tensor grad, Tensor pred, Tensor stats) -> Tensor");
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, Autograd, m) {
  m.impl("dfl_loss", &detloss::dfl_loss_autograd);
  m.impl("dfl_backward", &detloss::dfl_backward_autograd);
  m.impl("dfl_integral", &detloss::dfl_integral_autograd);
  m.impl("dfl_integral_backward", &detloss::dfl_integral_backward_autograd);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCUDA, m) {
  m.impl("dfl_loss",
         &detloss::dfl_loss_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
  m.impl("dfl_integral",
         &detloss::dfl_integral_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCPU, m) {
  m.impl("dfl_loss",
         &detloss::dfl_loss_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
  m.impl("dfl_integral",
         &detloss::dfl_integral_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}
