// Schemas of the box family, the validation shared by CPU and CUDA, autograd and autocast.
#include "box.h"

#include <ATen/ExpandUtils.h>  // at::sum_to
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace detloss {
namespace {

math::BoxKind parse_box_kind(std::string_view kind, const char* op) {
  if (kind == "iou") return math::BoxKind::kIoU;
  if (kind == "giou") return math::BoxKind::kGIoU;
  if (kind == "diou") return math::BoxKind::kDIoU;
  if (kind == "ciou") return math::BoxKind::kCIoU;
  TORCH_CHECK_VALUE(false, op, ": kind must be one of 'iou', 'giou', 'diou', 'ciou', got '",
                    std::string(kind), "'");
}

bool parse_box_format(std::string_view f, const char* op) {
  if (f == "xyxy") return false;
  if (f == "xywh") return true;
  TORCH_CHECK_VALUE(false, op, ": box_format must be 'xyxy' (corners) or 'xywh' (centre, size), "
                    "got '", std::string(f), "'");
}

void check_eps(double eps, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op,
                    ": eps must be a finite number >= 0, got ", eps);
}

void check_boxes_dtype(const at::Tensor& t, const char* arg, const char* op, bool integers_ok) {
  const auto s = t.scalar_type();
  const bool fl = s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
  if (integers_ok) {
    TORCH_CHECK_TYPE(fl || at::isIntegralType(s, /*includeBool=*/false), op, ": ", arg,
                     " must be a floating or integer tensor, got ", s);
  } else {
    TORCH_CHECK_TYPE(fl, op, ": ", arg, " must be a floating tensor (float32, float64, float16 "
                     "or bfloat16) to be differentiated, got ", s,
                     " (box_iou_matrix takes integer boxes; it has no gradient)");
  }
}

std::vector<int64_t> leading(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - 1);
}

}  // namespace

BoxArgs prepare_box(const at::Tensor& pred, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, std::string_view kind,
                    std::string_view box_format, double eps, std::string_view reduction) {
  constexpr const char* op = "detloss.box_loss";
  BoxArgs a;
  a.kind = parse_box_kind(kind, op);
  a.xywh = parse_box_format(box_format, op);
  a.reduction = parse_reduction(reduction, op);
  check_eps(eps, op);
  a.eps = eps;
  check_boxes_dtype(pred, "pred", op, false);
  check_boxes_dtype(target, "target", op, true);
  check_same_device(target, pred, "target", "pred", op);
  TORCH_CHECK_VALUE(pred.dim() >= 1 && pred.size(-1) == 4, op,
                    ": pred must have shape [..., 4], got ", pred.sizes());
  TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(-1) == 4, op,
                    ": target must have shape [..., 4], got ", target.sizes());
  const auto lp = leading(pred), lt = leading(target);
  const size_t nd = std::max(lp.size(), lt.size());
  a.shape.assign(nd, 1);
  for (size_t k = 1; k <= nd; ++k) {  // numpy broadcasting of the leading dims
    const int64_t p = k <= lp.size() ? lp[lp.size() - k] : 1;
    const int64_t t = k <= lt.size() ? lt[lt.size() - k] : 1;
    TORCH_CHECK_VALUE(p == t || p == 1 || t == 1, op, ": the leading dims of pred ",
                      pred.sizes(), " and target ", target.sizes(), " do not broadcast");
    a.shape[nd - k] = p == 1 ? t : p;
  }
  const auto dtype = pred.scalar_type();
  check_representable(eps, dtype, "eps", op);
  a.options = pred.options();
  a.pred = describe_rows(pred, a.shape, 4, dtype, "pred", op);
  a.target = describe_rows(target, a.shape, 4, dtype, "target", op);
  if (weight.has_value() && weight->defined()) {
    check_floating(*weight, "weight", op);
    check_same_device(*weight, pred, "weight", "pred", op);
  }
  a.weight = describe_operand(weight, a.shape, dtype, "weight", op);
  return a;
}

void check_box_grad(const at::Tensor& grad, const BoxArgs& a) {
  constexpr const char* op = "detloss.box_backward";
  check_floating(grad, "grad", op);
  TORCH_CHECK_VALUE(grad.device() == a.options.device(), op, ": grad is on ", grad.device(),
                    " but the boxes are on ", a.options.device());
  if (a.reduction != Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad of a reduced loss must be 0-dim, got shape ",
                      grad.sizes());
  } else {
    TORCH_CHECK_VALUE(at::is_expandable_to(grad.sizes(), a.shape), op, ": grad of shape ",
                      grad.sizes(), " is not broadcastable to the loss shape ",
                      at::IntArrayRef(a.shape));
  }
}

BoxMatrixArgs prepare_box_matrix(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                 std::string_view kind, std::string_view box_format,
                                 double eps) {
  constexpr const char* op = "detloss.box_iou_matrix";
  BoxMatrixArgs a;
  a.kind = parse_box_kind(kind, op);
  a.xywh = parse_box_format(box_format, op);
  check_eps(eps, op);
  a.eps = eps;
  check_boxes_dtype(boxes1, "boxes1", op, true);
  check_boxes_dtype(boxes2, "boxes2", op, true);
  check_same_device(boxes2, boxes1, "boxes2", "boxes1", op);
  const bool ok = (boxes1.dim() == 2 || boxes1.dim() == 3) && boxes2.dim() == boxes1.dim() &&
                  boxes1.size(-1) == 4 && boxes2.size(-1) == 4 &&
                  (boxes1.dim() == 2 || boxes1.size(0) == boxes2.size(0));
  TORCH_CHECK_VALUE(ok, op, ": boxes1 and boxes2 must be [N, 4] and [M, 4], or [B, N, 4] and "
                    "[B, M, 4]; got ", boxes1.sizes(), " and ", boxes2.sizes());
  // integer boxes are computed in float32 (as torchvision.ops.box_iou does)
  auto dt = at::result_type(boxes1, boxes2);
  if (!at::isFloatingType(dt)) dt = at::kFloat;
  check_representable(eps, dt, "eps", op);
  a.batched = boxes1.dim() == 3;
  a.boxes1 = (a.batched ? boxes1 : boxes1.unsqueeze(0)).to(dt).contiguous();
  a.boxes2 = (a.batched ? boxes2 : boxes2.unsqueeze(0)).to(dt).contiguous();
  return a;
}

// ---------------------------------------------------------------- autograd and autocast
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

using BoxLossSig = at::Tensor(const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, c10::string_view,
                               c10::string_view, double, c10::string_view);
using BoxLossGradSig = BoxTriple(const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, c10::string_view,
                                 c10::string_view, double, c10::string_view, std::array<bool, 2>);
using BoxBackwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    c10::string_view, c10::string_view, double, c10::string_view, std::array<bool, 2>);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

at::Tensor call_box_loss(const at::Tensor& pred, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, c10::string_view kind,
                         c10::string_view fmt, double eps, c10::string_view reduction) {
  static const auto op = find_op<BoxLossSig>(DETLOSS_OP("box_loss"));
  return op.call(pred, target, weight, kind, fmt, eps, reduction);
}

at::Tensor call_box_matrix(const at::Tensor& b1, const at::Tensor& b2, c10::string_view kind,
                           c10::string_view fmt, double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(DETLOSS_OP("box_iou_matrix"), "")
                             .typed<decltype(box_matrix_entry<box_matrix_cpu>)>();
  return op.call(b1, b2, kind, fmt, eps);
}

// Returns only the gradients asked for (autograd cannot wrap undefined outputs);
// box_grads() puts them back in their slots.
class BoxBackwardFunction : public torch::autograd::Function<BoxBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& pred,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               c10::string_view kind, c10::string_view fmt, double eps,
                               c10::string_view reduction, std::array<bool, 2> mask) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<BoxBackwardSig>(DETLOSS_OP("box_backward"));
    auto [gp, gt] = op.call(grad, pred, target, weight, kind, fmt, eps, reduction, mask);
    variable_list out;
    if (mask[0]) out.push_back(gp);
    if (mask[1]) out.push_back(gt);
    return out;
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "detloss: double backward through box_loss is not supported (the "
                       "backward op is analytic and has no derivative of its own)");
  }
};

std::tuple<at::Tensor, at::Tensor> box_grads(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, c10::string_view kind, c10::string_view fmt,
    double eps, c10::string_view reduction, std::array<bool, 2> mask) {
  if (!mask[0] && !mask[1]) return {at::Tensor(), at::Tensor()};
  const auto r =
      BoxBackwardFunction::apply(grad, pred, target, weight, kind, fmt, eps, reduction, mask);
  size_t i = 0;
  at::Tensor gp = mask[0] ? r[i++] : at::Tensor();
  at::Tensor gt = mask[1] ? r[i++] : at::Tensor();
  return {gp, gt};
}

// Gradient in the forward (as for the classification losses, csrc/ops/cls.cpp): with a box
// requiring grad, box_loss_with_grad computes the loss and the gradients of the boxes that
// require grad in one pass; the backward scales them by the upstream gradient in place
// (nothing for loss.backward()) and sums them to the inputs' shapes. A second backward of a
// retained graph recomputes them with box_backward: the same kernel and scaling, the same bits.
class BoxLossFunction : public torch::autograd::Function<BoxLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, bool need_pred, bool need_target,
                            const at::Tensor& pred, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, c10::string_view kind,
                            c10::string_view fmt, double eps, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out;
    if (need_pred || need_target) {
      static const auto op = find_op<BoxLossGradSig>(DETLOSS_OP("box_loss_with_grad"));
      at::Tensor gp, gt;
      std::tie(out, gp, gt) =
          op.call(pred, target, weight, kind, fmt, eps, reduction, {need_pred, need_target});
      if (gp.defined()) ctx->saved_data["grad_pred"] = gp;  // scaled in place: not saved vars
      if (gt.defined()) ctx->saved_data["grad_target"] = gt;
    } else {
      out = call_box_loss(pred, target, weight, kind, fmt, eps, reduction);
    }
    ctx->save_for_backward({pred, target, weight.value_or(at::Tensor())});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["fmt"] = std::string(fmt);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["reduction"] = std::string(reduction);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};  // tensor args
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    const Reduction red = parse_reduction(reduction, "detloss.box_loss");
    // the forward's gradients, consumed (taken out of saved_data) by the first backward
    const auto has = [&](const char* key) {
      const auto it = ctx->saved_data.find(key);
      return it != ctx->saved_data.end() && it->second.isTensor();
    };
    const auto take = [&](const char* key) {
      if (!has(key)) return at::Tensor();
      auto& v = ctx->saved_data[key];
      at::Tensor g = v.toTensor();
      v = c10::IValue();
      return g;
    };
    at::Tensor gp, gt;
    if (!torch::autograd::GradMode::is_enabled() && (!mask[0] || has("grad_pred")) &&
        (!mask[1] || has("grad_target"))) {
      gp = take("grad_pred");
      gt = take("grad_target");
      gp = mask[0] ? scale_by_upstream(gp, grads[0], red, true, true) : at::Tensor();
      gt = mask[1] ? scale_by_upstream(gt, grads[0], red, true, true) : at::Tensor();
    } else {  // a second backward of a retained graph, or create_graph=True
      std::tie(gp, gt) = box_grads(grads[0], s[0], s[1], opt(s[2]),
                                   ctx->saved_data["kind"].toStringRef(),
                                   ctx->saved_data["fmt"].toStringRef(),
                                   ctx->saved_data["eps"].toDouble(), reduction, mask);
    }
    // per-pair gradients have the broadcast shape; sum them back to each input's shape
    if (gp.defined()) gp = at::sum_to(gp, s[0].sizes());
    if (gt.defined()) gt = at::sum_to(gt, s[1].sizes()).to(s[1].scalar_type());
    return {at::Tensor(), at::Tensor(), gp, gt, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

class BoxMatrixFunction : public torch::autograd::Function<BoxMatrixFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& b1, const at::Tensor& b2,
                            c10::string_view kind, c10::string_view fmt, double eps) {
    at::AutoDispatchBelowADInplaceOrView below;
    return call_box_matrix(b1, b2, kind, fmt, eps);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "detloss: box_iou_matrix is forward-only (it is what label assigners "
                       "compute, under no_grad); for a differentiable metric of box pairs use "
                       "iou_loss or bbox_iou");
  }
};

at::Tensor box_loss_autograd(const at::Tensor& pred, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, c10::string_view kind,
                             c10::string_view fmt, double eps, c10::string_view reduction) {
  const bool grad_mode = torch::autograd::GradMode::is_enabled();
  TORCH_CHECK(!(grad_mode && weight.has_value() && weight->defined() && weight->requires_grad()),
              "detloss: weight requires grad, but box losses are differentiated with respect "
              "to the boxes only; pass weight.detach()");
  return BoxLossFunction::apply(grad_mode && pred.requires_grad(),
                                grad_mode && target.requires_grad(), pred, target, weight, kind,
                                fmt, eps, reduction);
}

std::tuple<at::Tensor, at::Tensor> box_backward_autograd(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, c10::string_view kind, c10::string_view fmt,
    double eps, c10::string_view reduction, std::array<bool, 2> mask) {
  return box_grads(grad, pred, target, weight, kind, fmt, eps, reduction, mask);
}

at::Tensor box_matrix_autograd(const at::Tensor& b1, const at::Tensor& b2, c10::string_view kind,
                               c10::string_view fmt, double eps) {
  return BoxMatrixFunction::apply(b1, b2, kind, fmt, eps);
}

// Under autocast the losses run in float32 (as the classification losses do), so that an fp16
// sum over many pairs cannot overflow and coordinates keep their precision.
template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor box_loss_autocast(const at::Tensor& pred, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, c10::string_view kind,
                             c10::string_view fmt, double eps, c10::string_view reduction) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  return call_box_loss(at::autocast::cached_cast(at::kFloat, pred, device),
                       at::autocast::cached_cast(at::kFloat, target, device),
                       at::autocast::cached_cast(at::kFloat, weight, device), kind, fmt, eps,
                       reduction);
}

}  // namespace
}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "box_loss(Tensor pred, Tensor target, Tensor? weight, str kind, str box_format, "
      "float eps, str reduction) -> Tensor");
  // the loss and d(loss)/d(pred), d(loss)/d(target) (where asked) at upstream 1, in one pass
  m.def(
      "box_loss_with_grad(Tensor pred, Tensor target, Tensor? weight, str kind, "
      "str box_format, float eps, str reduction, bool[2] output_mask) "
      "-> (Tensor loss, Tensor grad_pred, Tensor grad_target)");
  m.def(
      "box_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, str kind, "
      "str box_format, float eps, str reduction, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "box_iou_matrix(Tensor boxes1, Tensor boxes2, str kind, str box_format, float eps) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, Autograd, m) {
  m.impl("box_loss", &detloss::box_loss_autograd);
  m.impl("box_backward", &detloss::box_backward_autograd);
  m.impl("box_iou_matrix", &detloss::box_matrix_autograd);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCUDA, m) {
  m.impl("box_loss",
         &detloss::box_loss_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCPU, m) {
  m.impl("box_loss",
         &detloss::box_loss_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}
