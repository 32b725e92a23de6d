// Autograd of every op family, registered at the Autograd key, on the one protocol of
// csrc/ops/protocol.h (the gradient computed in the forward, scaled in the backward). In C++
// rather than torch.library.register_autograd: the Python route adds tens of microseconds
// per forward+backward, more than torch's whole BCE at the small sizes where a GPU loss is
// launch-bound. (The schemas and validation: csrc/ops/<family>.cpp; autocast:
// csrc/ops/autocast.cpp; fake kernels: detloss_cuda/_ops.py.)
#include <ATen/ExpandUtils.h>  // at::sum_to
#include <torch/library.h>

#include <string>

#include "assign.h"
#include "box.h"
#include "cls.h"
#include "dfl.h"
#include "mask.h"
#include "protocol.h"

namespace detloss {
namespace {

using protocol::AutogradContext;
using protocol::find_op;
using protocol::opt;
using protocol::variable_list;

// ------------------------------------------------------------------------ classification
using ClsLossSig = at::Tensor(DETLOSS_CLS_PARAMS);
using ClsLossGradSig = std::tuple<at::Tensor, at::Tensor>(DETLOSS_CLS_PARAMS);
using ClsBackwardSig = at::Tensor(const at::Tensor&, DETLOSS_CLS_PARAMS);

class ClsBackwardFunction : public torch::autograd::Function<ClsBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad, DETLOSS_CLS_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<ClsBackwardSig>(DETLOSS_OP("cls_backward"));
    return op.call(grad, DETLOSS_CLS_ARGS);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    protocol::no_double_backward("cls_loss");
  }
};

class ClsLossFunction : public torch::autograd::Function<ClsLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, bool with_grad, DETLOSS_CLS_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out;
    if (with_grad) {
      static const auto op = find_op<ClsLossGradSig>(DETLOSS_OP("cls_loss_with_grad"));
      at::Tensor g;
      std::tie(out, g) = op.call(DETLOSS_CLS_ARGS);
      protocol::keep_grads<1>(ctx, {g});
    } else {
      static const auto op = find_op<ClsLossSig>(DETLOSS_OP("cls_loss"));
      out = op.call(DETLOSS_CLS_ARGS);
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
    if (auto kept = protocol::take_grads<1>(ctx, {true})) {
      grad_input = scale_by_upstream((*kept)[0], grads[0],
                                     parse_reduction(reduction, "detloss.cls_loss"),
                                     /*rows=*/false, /*in_place=*/true);
    } else {
      const auto s = ctx->get_saved_variables();
      grad_input = ClsBackwardFunction::apply(
          grads[0], s[0], s[1], opt(s[2]), opt(s[3]), opt(s[4]),
          ctx->saved_data["kind"].toStringRef(), ctx->saved_data["alpha"].toDouble(),
          ctx->saved_data["gamma"].toDouble(), reduction, opt(s[5]),
          ctx->saved_data["smoothing"].toDouble(), ctx->saved_data["ignore_index"].toInt());
    }
    variable_list out(13);  // one per forward argument (with_grad first): input's only
    out[1] = grad_input;
    return out;
  }
};

at::Tensor cls_loss_autograd(DETLOSS_CLS_PARAMS) {
  const bool grad_mode = torch::autograd::GradMode::is_enabled();
  if (grad_mode) {  // (forward() itself runs without grad)
    constexpr const char* why = "these losses are differentiated with respect to input only";
    constexpr const char* tail = " (a detached one is what ultralytics, mmdet and torchvision use)";
    protocol::check_detached(target, "target", why, tail);
    protocol::check_detached(weight, "weight", why, tail);
    protocol::check_detached(pos_weight, "pos_weight", why, tail);
    protocol::check_detached(score, "score", why, tail);
  }
  return ClsLossFunction::apply(grad_mode && input.requires_grad(), DETLOSS_CLS_ARGS);
}

at::Tensor cls_backward_autograd(const at::Tensor& grad, DETLOSS_CLS_PARAMS) {
  return ClsBackwardFunction::apply(grad, DETLOSS_CLS_ARGS);
}

// ---------------------------------------------------------------------------------- boxes
using BoxLossSig = at::Tensor(const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, c10::string_view,
                              c10::string_view, double, c10::string_view, double);
using BoxLossGradSig = BoxTriple(const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, c10::string_view,
                                 c10::string_view, double, c10::string_view, std::array<bool, 2>,
                                 double);
using BoxBackwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    c10::string_view, c10::string_view, double, c10::string_view, std::array<bool, 2>, double);
using BoxMatrixSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                                c10::string_view, double, double);

// Returns only the gradients asked for (autograd cannot wrap undefined outputs);
// box_grads() puts them back in their slots.
class BoxBackwardFunction : public torch::autograd::Function<BoxBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad, const at::Tensor& pred,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               c10::string_view kind, c10::string_view fmt, double eps,
                               c10::string_view reduction, std::array<bool, 2> mask,
                               double floor) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<BoxBackwardSig>(DETLOSS_OP("box_backward"));
    auto [gp, gt] = op.call(grad, pred, target, weight, kind, fmt, eps, reduction, mask, floor);
    variable_list out;
    if (mask[0]) out.push_back(gp);
    if (mask[1]) out.push_back(gt);
    return out;
  }
  static variable_list backward(AutogradContext*, variable_list) {
    protocol::no_double_backward("box_loss");
  }
};

std::tuple<at::Tensor, at::Tensor> box_grads(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, c10::string_view kind, c10::string_view fmt,
    double eps, c10::string_view reduction, std::array<bool, 2> mask, double floor) {
  if (!mask[0] && !mask[1]) return {at::Tensor(), at::Tensor()};
  const auto r = BoxBackwardFunction::apply(grad, pred, target, weight, kind, fmt, eps, reduction,
                                            mask, floor);
  size_t i = 0;
  at::Tensor gp = mask[0] ? r[i++] : at::Tensor();
  at::Tensor gt = mask[1] ? r[i++] : at::Tensor();
  return {gp, gt};
}

// The gradients of the boxes that require grad (pred, target), kept in the forward; the
// backward sums each to its input's shape (the pairs broadcast).
class BoxLossFunction : public torch::autograd::Function<BoxLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, bool need_pred, bool need_target,
                            const at::Tensor& pred, const at::Tensor& target,
                            const std::optional<at::Tensor>& weight, c10::string_view kind,
                            c10::string_view fmt, double eps, c10::string_view reduction,
                            double floor) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out;
    if (need_pred || need_target) {
      static const auto op = find_op<BoxLossGradSig>(DETLOSS_OP("box_loss_with_grad"));
      at::Tensor gp, gt;
      std::tie(out, gp, gt) = op.call(pred, target, weight, kind, fmt, eps, reduction,
                                      {need_pred, need_target}, floor);
      protocol::keep_grads<2>(ctx, {gp, gt});
    } else {
      static const auto op = find_op<BoxLossSig>(DETLOSS_OP("box_loss"));
      out = op.call(pred, target, weight, kind, fmt, eps, reduction, floor);
    }
    ctx->save_for_backward({pred, target, weight.value_or(at::Tensor())});
    ctx->saved_data["kind"] = std::string(kind);
    ctx->saved_data["fmt"] = std::string(fmt);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["floor"] = floor;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    at::Tensor gp, gt;
    if (auto kept = protocol::take_grads<2>(ctx, mask)) {
      const Reduction red = parse_reduction(reduction, "detloss.box_loss");
      if (mask[0]) gp = scale_by_upstream((*kept)[0], grads[0], red, true, true);
      if (mask[1]) gt = scale_by_upstream((*kept)[1], grads[0], red, true, true);
    } else {
      std::tie(gp, gt) = box_grads(grads[0], s[0], s[1], opt(s[2]),
                                   ctx->saved_data["kind"].toStringRef(),
                                   ctx->saved_data["fmt"].toStringRef(),
                                   ctx->saved_data["eps"].toDouble(), reduction, mask,
                                   ctx->saved_data["floor"].toDouble());
    }
    if (gp.defined()) gp = at::sum_to(gp, s[0].sizes());
    if (gt.defined()) gt = at::sum_to(gt, s[1].sizes()).to(s[1].scalar_type());
    return {at::Tensor(), at::Tensor(), gp, gt, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class BoxMatrixFunction : public torch::autograd::Function<BoxMatrixFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& b1, const at::Tensor& b2,
                            c10::string_view kind, c10::string_view fmt, double eps,
                            double floor) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<BoxMatrixSig>(DETLOSS_OP("box_iou_matrix"));
    return op.call(b1, b2, kind, fmt, eps, floor);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(false, "detloss: box_iou_matrix is forward-only (it is what label assigners "
                       "compute, under no_grad); for a differentiable metric of box pairs use "
                       "iou_loss or bbox_iou");
  }
};

at::Tensor box_loss_autograd(const at::Tensor& pred, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, c10::string_view kind,
                             c10::string_view fmt, double eps, c10::string_view reduction,
                             double floor) {
  const bool grad_mode = torch::autograd::GradMode::is_enabled();
  if (grad_mode) {
    protocol::check_detached(weight, "weight",
                             "box losses are differentiated with respect to the boxes only");
  }
  return BoxLossFunction::apply(grad_mode && pred.requires_grad(),
                                grad_mode && target.requires_grad(), pred, target, weight, kind,
                                fmt, eps, reduction, floor);
}

std::tuple<at::Tensor, at::Tensor> box_backward_autograd(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, c10::string_view kind, c10::string_view fmt,
    double eps, c10::string_view reduction, std::array<bool, 2> mask, double floor) {
  return box_grads(grad, pred, target, weight, kind, fmt, eps, reduction, mask, floor);
}

at::Tensor box_matrix_autograd(const at::Tensor& b1, const at::Tensor& b2, c10::string_view kind,
                               c10::string_view fmt, double eps, double floor) {
  return BoxMatrixFunction::apply(b1, b2, kind, fmt, eps, floor);
}

// ---------------------------------------------------------------------------- distribution
using Pair = std::tuple<at::Tensor, at::Tensor>;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using DflLossSig = Pair(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        c10::string_view);
using DflLossGradSig = Triple(const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, c10::string_view);
using DflBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const std::optional<at::Tensor>&,
                                  c10::string_view);
using IntegralSig = Pair(const at::Tensor&);
using IntegralBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);

class DflBackwardFunction : public torch::autograd::Function<DflBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& g, const at::Tensor& p,
                            const at::Tensor& t, const at::Tensor& stats,
                            const std::optional<at::Tensor>& w, c10::string_view r) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<DflBackwardSig>(DETLOSS_OP("dfl_backward"));
    return op.call(g, p, t, stats, w, r);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    protocol::no_double_backward("dfl_loss");
  }
};

// (CPU: each row's gradient while it is in cache; CUDA: from the row's max and sum in
// registers. The recomputing backward reads the forward's per-row stats.)
class DflLossFunction : public torch::autograd::Function<DflLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, bool with_grad, const at::Tensor& p,
                               const at::Tensor& t, const std::optional<at::Tensor>& w,
                               c10::string_view r) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out, stats;
    if (with_grad) {
      static const auto op = find_op<DflLossGradSig>(DETLOSS_OP("dfl_loss_with_grad"));
      at::Tensor grad;
      std::tie(out, stats, grad) = op.call(p, t, w, r);
      protocol::keep_grads<1>(ctx, {grad});
    } else {
      static const auto op = find_op<DflLossSig>(DETLOSS_OP("dfl_loss"));
      std::tie(out, stats) = op.call(p, t, w, r);
    }
    ctx->save_for_backward({p, t, stats, w.value_or(at::Tensor())});
    ctx->saved_data["reduction"] = std::string(r);
    ctx->mark_non_differentiable({stats});
    return {out, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string r = ctx->saved_data["reduction"].toStringRef();
    at::Tensor grad;
    if (auto kept = protocol::take_grads<1>(ctx, {true})) {
      grad = scale_by_upstream((*kept)[0], grads[0], parse_reduction(r, "detloss.dfl_loss"),
                               true, true);
    } else {
      const auto s = ctx->get_saved_variables();
      grad = DflBackwardFunction::apply(grads[0], s[0], s[1], s[2], opt(s[3]), r);
    }
    return {at::Tensor(), grad, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class IntegralBackwardFunction : public torch::autograd::Function<IntegralBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& g, const at::Tensor& p,
                            const at::Tensor& stats) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<IntegralBackwardSig>(DETLOSS_OP("dfl_integral_backward"));
    return op.call(g, p, stats);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    protocol::no_double_backward("dfl_integral");
  }
};

// The integral's gradient depends on the upstream per row: computed in the backward, from
// the forward's per-row (lse, mean), in one pass.
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

using KlSig = Pair(const at::Tensor&, const at::Tensor&, double);
using KlBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, double);

class DflKlBackwardFunction : public torch::autograd::Function<DflKlBackwardFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& g, const at::Tensor& p,
                            const at::Tensor& u, const at::Tensor& stats, double temp) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<KlBackwardSig>(DETLOSS_OP("dfl_kl_backward"));
    return op.call(g, p, u, stats, temp);
  }
  static variable_list backward(AutogradContext*, variable_list) {
    protocol::no_double_backward("dfl_kl");
  }
};

// The upstream differs per row (the caller's weights): the gradient is computed in the
// backward, from the forward's per-row statistics, in one pass.
class DflKlFunction : public torch::autograd::Function<DflKlFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& p, const at::Tensor& u,
                               double temp) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<KlSig>(DETLOSS_OP("dfl_kl"));
    auto [out, stats] = op.call(p, u, temp);
    ctx->save_for_backward({p, u, stats});
    ctx->saved_data["temperature"] = temp;
    ctx->mark_non_differentiable({stats});
    return {out, stats};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const double temp = ctx->saved_data["temperature"].toDouble();
    return {DflKlBackwardFunction::apply(grads[0], s[0], s[1], s[2], temp), at::Tensor(),
            at::Tensor()};
  }
};

Pair dfl_kl_autograd(const at::Tensor& p, const at::Tensor& u, double temp) {
  if (torch::autograd::GradMode::is_enabled()) {
    protocol::check_detached(u, "teacher", "the distillation KL has no gradient with respect "
                             "to its teacher");
  }
  auto out = DflKlFunction::apply(p, u, temp);
  return {out[0], out[1]};
}
at::Tensor dfl_kl_backward_autograd(const at::Tensor& g, const at::Tensor& p, const at::Tensor& u,
                                    const at::Tensor& stats, double temp) {
  return DflKlBackwardFunction::apply(g, p, u, stats, temp);
}

Pair dfl_loss_autograd(const at::Tensor& p, const at::Tensor& t,
                       const std::optional<at::Tensor>& w, c10::string_view r) {
  const bool grad_mode = torch::autograd::GradMode::is_enabled();
  if (grad_mode) {
    protocol::check_detached(t, "target", "DFL has no gradient with respect to its target");
    protocol::check_detached(w, "weight", "DFL has no gradient with respect to its weight");
  }
  auto out = DflLossFunction::apply(grad_mode && p.requires_grad(), p, t, w, r);
  return {out[0], out[1]};
}
at::Tensor dfl_backward_autograd(const at::Tensor& g, const at::Tensor& p, const at::Tensor& t,
                                 const at::Tensor& stats, const std::optional<at::Tensor>& w,
                                 c10::string_view r) {
  return DflBackwardFunction::apply(g, p, t, stats, w, r);
}
Pair dfl_integral_autograd(const at::Tensor& p) {
  auto out = IntegralFunction::apply(p);
  return {out[0], out[1]};
}
at::Tensor dfl_integral_backward_autograd(const at::Tensor& g, const at::Tensor& p,
                                          const at::Tensor& stats) {
  return IntegralBackwardFunction::apply(g, p, stats);
}

// ------------------------------------------------------------------------------------ mask
using MaskLossSig = at::Tensor(DETLOSS_MASK_PARAMS);
using MaskLossGradSig = Triple(DETLOSS_MASK_PARAMS);
using MaskBackwardSig = Pair(const at::Tensor&, DETLOSS_MASK_PARAMS);

class MaskBackwardFunction : public torch::autograd::Function<MaskBackwardFunction> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad, DETLOSS_MASK_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = find_op<MaskBackwardSig>(DETLOSS_OP("prototype_mask_backward"));
    auto [gc, gp] = op.call(grad, DETLOSS_MASK_ARGS);
    return {gc, gp};
  }
  static variable_list backward(AutogradContext*, variable_list) {
    protocol::no_double_backward("prototype_mask_loss");
  }
};

// Two differentiable inputs, coef and proto, whose gradients one pass computes (the
// prototypes' sums over each image's positives). 'none' computes them in the backward: the
// prototypes' gradient needs each positive's upstream inside the sum.
class MaskLossFunction : public torch::autograd::Function<MaskLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, bool with_grad, DETLOSS_MASK_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below;
    at::Tensor out;
    if (with_grad) {
      static const auto op = find_op<MaskLossGradSig>(DETLOSS_OP("prototype_mask_loss_with_grad"));
      at::Tensor gc, gp;
      std::tie(out, gc, gp) = op.call(DETLOSS_MASK_ARGS);
      protocol::keep_grads<2>(ctx, {gc, gp});
    } else {
      static const auto op = find_op<MaskLossSig>(DETLOSS_OP("prototype_mask_loss"));
      out = op.call(DETLOSS_MASK_ARGS);
    }
    ctx->save_for_backward({coef, proto, batch_index, boxes, area, masks, mask_index,
                            positive.value_or(at::Tensor())});
    ctx->saved_data["overlap"] = overlap;
    ctx->saved_data["reduction"] = std::string(reduction);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::array<bool, 2> need = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const std::string r = ctx->saved_data["reduction"].toStringRef();
    at::Tensor gc, gp;
    if (auto kept = protocol::take_grads<2>(ctx, need)) {
      const Reduction red = parse_reduction(r, "detloss.prototype_mask_loss");
      if (need[0]) gc = scale_by_upstream((*kept)[0], grads[0], red, false, true);
      if (need[1]) gp = scale_by_upstream((*kept)[1], grads[0], red, false, true);
    } else {
      const auto s = ctx->get_saved_variables();
      const auto g = MaskBackwardFunction::apply(grads[0], s[0], s[1], s[2], s[3], s[4], s[5],
                                                 s[6], ctx->saved_data["overlap"].toBool(), r,
                                                 opt(s[7]));
      if (need[0]) gc = g[0];
      if (need[1]) gp = g[1];
    }
    return {at::Tensor(), gc, gp, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor mask_loss_autograd(DETLOSS_MASK_PARAMS) {
  const bool grad_mode = torch::autograd::GradMode::is_enabled();
  if (grad_mode) {
    for (const auto& [t, name] : {std::pair{&boxes, "boxes"}, {&area, "area"}, {&masks, "masks"}})
      protocol::check_detached(*t, name, "the mask loss has no gradient with respect to it");
  }
  const bool with_grad = grad_mode && (coef.requires_grad() || proto.requires_grad()) &&
                         parse_reduction(sv(reduction), "detloss.prototype_mask_loss") !=
                             Reduction::kNone;
  return MaskLossFunction::apply(with_grad, DETLOSS_MASK_ARGS);
}
Pair mask_backward_autograd(const at::Tensor& grad, DETLOSS_MASK_PARAMS) {
  const auto g = MaskBackwardFunction::apply(grad, DETLOSS_MASK_ARGS);
  return {g[0], g[1]};
}

// ------------------------------------------------------------------------------- assigner
// The assignment has no gradient (ultralytics runs it under no_grad): below autograd.
// Rotated: tal_assign_rotated, the same schema with xywhr boxes.
template <bool Rotated>
TalResult tal_assign_autograd(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                              const at::Tensor& anc_points, const at::Tensor& gt_labels,
                              const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                              int64_t topk, int64_t topk2, double alpha, double beta,
                              double stride_val, double eps, bool scores_are_logits) {
  at::AutoDispatchBelowADInplaceOrView below;
  using Sig = TalResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                        int64_t, double, double, double, double, bool);
  static const auto op =
      find_op<Sig>(Rotated ? DETLOSS_OP("tal_assign_rotated") : DETLOSS_OP("tal_assign"));
  return op.call(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk, topk2,
                 alpha, beta, stride_val, eps, scores_are_logits);
}

TalResult tal_assign_seg_autograd(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                                  const at::Tensor& anc_points, const at::Tensor& gt_labels,
                                  const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                                  const at::Tensor& pd_coef, const at::Tensor& mask_scale,
                                  const at::Tensor& proto, const at::Tensor& gt_masks, int64_t topk,
                                  int64_t topk2, double alpha, double beta, double stride_val,
                                  double eps, bool scores_are_logits) {
  at::AutoDispatchBelowADInplaceOrView below;
  using Sig = TalResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, int64_t, int64_t, double, double, double, double, bool);
  static const auto op = find_op<Sig>(DETLOSS_OP("tal_assign_seg"));
  return op.call(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, pd_coef,
                 mask_scale, proto, gt_masks, topk, topk2, alpha, beta, stride_val, eps,
                 scores_are_logits);
}

}  // namespace
}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, Autograd, m) {
  m.impl("cls_loss", &detloss::cls_loss_autograd);
  m.impl("cls_backward", &detloss::cls_backward_autograd);
  m.impl("box_loss", &detloss::box_loss_autograd);
  m.impl("box_backward", &detloss::box_backward_autograd);
  m.impl("box_iou_matrix", &detloss::box_matrix_autograd);
  m.impl("dfl_loss", &detloss::dfl_loss_autograd);
  m.impl("dfl_backward", &detloss::dfl_backward_autograd);
  m.impl("dfl_integral", &detloss::dfl_integral_autograd);
  m.impl("dfl_integral_backward", &detloss::dfl_integral_backward_autograd);
  m.impl("dfl_kl", &detloss::dfl_kl_autograd);
  m.impl("dfl_kl_backward", &detloss::dfl_kl_backward_autograd);
  m.impl("tal_assign", &detloss::tal_assign_autograd<false>);
  m.impl("tal_assign_seg", &detloss::tal_assign_seg_autograd);
  m.impl("tal_assign_rotated", &detloss::tal_assign_autograd<true>);
  m.impl("prototype_mask_loss", &detloss::mask_loss_autograd);
  m.impl("prototype_mask_backward", &detloss::mask_backward_autograd);
}
