// Schemas of the box family and the validation shared by CPU and CUDA (autograd:
// csrc/ops/autograd.cpp; autocast: csrc/ops/autocast.cpp).
#include "box.h"

#include <ATen/ExpandUtils.h>  // at::is_expandable_to
#include <ATen/OpMathType.h>
#include <ATen/ops/result_type.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace detloss {
namespace {

math::BoxKind parse_box_kind(std::string_view kind, const char* op) {
  if (kind == "iou") return math::BoxKind::kIoU;
  if (kind == "giou") return math::BoxKind::kGIoU;
  if (kind == "diou") return math::BoxKind::kDIoU;
  if (kind == "ciou") return math::BoxKind::kCIoU;
  if (kind == "probiou") return math::BoxKind::kProbIoU;
  if (kind == "probiou_ciou") return math::BoxKind::kProbCIoU;
  TORCH_CHECK_VALUE(false, op, ": kind must be one of 'iou', 'giou', 'diou', 'ciou' (boxes), "
                    "'probiou', 'probiou_ciou' (rotated boxes), got '", std::string(kind), "'");
}

// Returns xywh; the rotated kinds take 'xywhr' and only they do.
bool parse_box_format(std::string_view f, std::string_view kind, const char* op) {
  const bool rotated = math::is_rotated(parse_box_kind(kind, op));
  TORCH_CHECK_VALUE(f == "xyxy" || f == "xywh" || f == "xywhr", op,
                    ": box_format must be 'xyxy' (corners), 'xywh' (centre, size) or 'xywhr' "
                    "(centre, size, angle: rotated boxes), got '", std::string(f), "'");
  TORCH_CHECK_VALUE(rotated == (f == "xywhr"), op, ": kind '", std::string(kind),
                    "' takes box_format ",
                    rotated ? "'xywhr' (rotated boxes)" : "'xyxy' or 'xywh'", ", got '",
                    std::string(f), "'");
  return f == "xywh";
}

void check_eps(double eps, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, op,
                    ": eps must be a finite number >= 0, got ", eps);
}

void check_floor(double floor, math::BoxKind kind, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(floor) && floor >= 0.0, op,
                    ": floor must be a finite number >= 0, got ", floor);
  TORCH_CHECK_VALUE(floor == 0.0 || math::is_rotated(kind), op,
                    ": floor (added to a rotated box's variances) applies to the 'probiou' "
                    "kinds only, got ", floor);
}

void check_boxes_dtype(const at::Tensor& t, const char* arg, const char* op, bool integers_ok) {
  const auto s = t.scalar_type();
  const bool fl = is_floating(s);
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
                    std::string_view box_format, double eps, std::string_view reduction,
                    double floor) {
  constexpr const char* op = "detloss.box_loss";
  BoxArgs a;
  a.kind = parse_box_kind(kind, op);
  a.xywh = parse_box_format(box_format, kind, op);
  a.row = math::box_row(a.kind);
  a.reduction = parse_reduction(reduction, op);
  check_eps(eps, op);
  check_floor(floor, a.kind, op);
  a.eps = eps;
  a.floor = floor;
  check_boxes_dtype(pred, "pred", op, false);
  check_boxes_dtype(target, "target", op, true);
  check_same_device(target, pred, "target", "pred", op);
  const int64_t R = a.row;
  TORCH_CHECK_VALUE(pred.dim() >= 1 && pred.size(-1) == R, op, ": pred must have shape [..., ",
                    R, "], got ", pred.sizes(), " (box_format '", std::string(box_format), "')");
  TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(-1) == R, op,
                    ": target must have shape [..., ", R, "], got ", target.sizes(),
                    " (box_format '", std::string(box_format), "')");
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
  check_representable(floor, dtype, "floor", op);
  a.options = pred.options();
  a.pred = describe_rows(pred, a.shape, R, dtype, "pred", op);
  a.target = describe_rows(target, a.shape, R, dtype, "target", op);
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
                                 double eps, double floor) {
  constexpr const char* op = "detloss.box_iou_matrix";
  BoxMatrixArgs a;
  a.kind = parse_box_kind(kind, op);
  a.xywh = parse_box_format(box_format, kind, op);
  a.row = math::box_row(a.kind);
  check_eps(eps, op);
  check_floor(floor, a.kind, op);
  a.eps = eps;
  a.floor = floor;
  check_boxes_dtype(boxes1, "boxes1", op, true);
  check_boxes_dtype(boxes2, "boxes2", op, true);
  check_same_device(boxes2, boxes1, "boxes2", "boxes1", op);
  const int64_t R = a.row;
  const bool ok = (boxes1.dim() == 2 || boxes1.dim() == 3) && boxes2.dim() == boxes1.dim() &&
                  boxes1.size(-1) == R && boxes2.size(-1) == R &&
                  (boxes1.dim() == 2 || boxes1.size(0) == boxes2.size(0));
  TORCH_CHECK_VALUE(ok, op, ": boxes1 and boxes2 must be [N, ", R, "] and [M, ", R, "], or [B, N, ",
                    R, "] and [B, M, ", R, "] (box_format '", std::string(box_format), "'); got ",
                    boxes1.sizes(), " and ", boxes2.sizes());
  // integer boxes are computed in float32 (as torchvision.ops.box_iou does)
  auto dt = at::result_type(boxes1, boxes2);
  if (!at::isFloatingType(dt)) dt = at::kFloat;
  check_representable(eps, dt, "eps", op);
  check_representable(floor, dt, "floor", op);
  a.batched = boxes1.dim() == 3;
  a.boxes1 = (a.batched ? boxes1 : boxes1.unsqueeze(0)).to(dt).contiguous();
  a.boxes2 = (a.batched ? boxes2 : boxes2.unsqueeze(0)).to(dt).contiguous();
  return a;
}

}  // namespace detloss

namespace detloss {

MatchCostArgs prepare_match_cost(const at::Tensor& logits, const at::Tensor& pred_boxes,
                                 const at::Tensor& target_labels, const at::Tensor& target_boxes,
                                 at::IntArrayRef sizes, std::string_view class_kind,
                                 double class_weight, double bbox_weight, double giou_weight,
                                 double alpha, double gamma, std::string_view convention) {
  constexpr const char* op = "detloss.detr_match_cost";
  MatchCostArgs a;
  TORCH_CHECK_VALUE(class_kind == "softmax" || class_kind == "focal" || class_kind == "given", op,
                    ": class_kind must be 'softmax' (DETR), 'focal' (Deformable DETR, RT-DETR, "
                    "...) or 'given' (logits is the class cost), got '", std::string(class_kind),
                    "'");
  TORCH_CHECK_VALUE(convention == "transformers" || convention == "ultralytics", op,
                    ": convention must be 'transformers' or 'ultralytics', got '",
                    std::string(convention), "'");
  const bool given = class_kind == "given";
  check_floating(logits, "logits", op);
  TORCH_CHECK_VALUE(logits.dim() == 3 && (given || logits.size(2) >= 1), op,
                    ": logits must have shape [B, Q, C] (images, queries, classes), got ",
                    logits.sizes());
  a.B = logits.size(0);
  a.Q = logits.size(1);
  a.C = logits.size(2);
  check_floating(pred_boxes, "pred_boxes", op);
  TORCH_CHECK_VALUE(pred_boxes.dim() == 3 && pred_boxes.size(0) == a.B && pred_boxes.size(1) == a.Q &&
                        pred_boxes.size(2) == 4,
                    op, ": pred_boxes must have shape [B, Q, 4] = [", a.B, ", ", a.Q,
                    ", 4] (cx, cy, w, h), got ", pred_boxes.sizes());
  check_floating(target_boxes, "target_boxes", op);
  TORCH_CHECK_VALUE(target_boxes.dim() == 2 && target_boxes.size(1) == 4, op,
                    ": target_boxes must have shape [T, 4] (every image's targets, concatenated; "
                    "cx, cy, w, h), got ", target_boxes.sizes());
  a.T = target_boxes.size(0);
  TORCH_CHECK_TYPE(at::isIntegralType(target_labels.scalar_type(), /*includeBool=*/false), op,
                   ": target_labels must be an integer tensor (class indices), got ",
                   target_labels.scalar_type());
  TORCH_CHECK_VALUE(target_labels.dim() == 1 && target_labels.size(0) == a.T, op,
                    ": target_labels must have shape [T] = [", a.T, "] (one per target box), got ",
                    target_labels.sizes());
  TORCH_CHECK_VALUE(static_cast<int64_t>(sizes.size()) == a.B, op, ": sizes must hold B = ", a.B,
                    " numbers (each image's target count), got ", sizes.size());
  int64_t total = 0;
  std::vector<int64_t> off(a.B + 1, 0);
  for (int64_t b = 0; b < a.B; ++b) {
    TORCH_CHECK_VALUE(sizes[b] >= 0, op, ": sizes must be >= 0, got ", sizes[b], " for image ", b);
    total += sizes[b];
    off[b + 1] = total;
    a.Tmax = std::max(a.Tmax, sizes[b]);
  }
  TORCH_CHECK_VALUE(total == a.T, op, ": sizes must add up to the ", a.T,
                    " targets of target_boxes, got ", total);
  TORCH_CHECK_VALUE(!given || a.C == a.Tmax, op, ": with class_kind='given', logits must be the "
                    "class cost [B, Q, max(sizes)] = [", a.B, ", ", a.Q, ", ", a.Tmax, "], got ",
                    logits.sizes());
  for (const auto* t : {&pred_boxes, &target_labels, &target_boxes}) {
    TORCH_CHECK_VALUE(t->device() == logits.device(), op,
                      ": all tensors must be on one device; logits is on ", logits.device(),
                      " but another is on ", t->device());
  }
  for (auto [v, name] : {std::pair{class_weight, "class_cost"}, {bbox_weight, "bbox_cost"},
                         {giou_weight, "giou_cost"}, {alpha, "alpha"}}) {
    TORCH_CHECK_VALUE(std::isfinite(v), op, ": ", name, " must be a finite number, got ", v);
  }
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0, op,
                    ": gamma must be a finite number >= 0, got ", gamma);
  a.dtype = at::result_type(logits, pred_boxes);
  a.dtype = c10::promoteTypes(a.dtype, target_boxes.scalar_type());
  const auto opmath = at::toOpMathType(a.dtype);  // the arithmetic (half inputs: float)
  for (auto [v, name] : {std::pair{class_weight, "class_cost"}, {bbox_weight, "bbox_cost"},
                         {giou_weight, "giou_cost"}, {alpha, "alpha"}, {gamma, "gamma"}}) {
    check_representable(v, opmath, name, op);
  }
  const auto as = [&](const at::Tensor& t) {
    return (t.scalar_type() == a.dtype ? t : t.to(a.dtype)).contiguous();
  };
  a.logits = as(logits);
  a.pred = as(pred_boxes);
  a.target = as(target_boxes);
  a.labels = (target_labels.scalar_type() == at::kLong ? target_labels : target_labels.to(at::kLong))
                 .contiguous();
  a.offsets = at::tensor(off, at::TensorOptions().dtype(at::kLong)).to(logits.device());
  a.w.w_class = class_weight;
  a.w.w_bbox = bbox_weight;
  a.w.w_giou = giou_weight;
  a.w.alpha = alpha;
  a.w.one_minus_alpha = 1.0 - alpha;
  a.w.gamma = gamma;
  a.w.kind = given ? math::MatchClass::kGiven
                   : (class_kind == "focal" ? math::MatchClass::kFocal : math::MatchClass::kSoftmax);
  a.w.convention = convention == "ultralytics" ? math::MatchConvention::kUltralytics
                                               : math::MatchConvention::kTransformers;
  return a;
}

}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "box_loss(Tensor pred, Tensor target, Tensor? weight, str kind, str box_format, "
      "float eps, str reduction, float floor=0.) -> Tensor");
  // the loss and d(loss)/d(pred), d(loss)/d(target) (where asked) at upstream 1, in one pass
  m.def(
      "box_loss_with_grad(Tensor pred, Tensor target, Tensor? weight, str kind, "
      "str box_format, float eps, str reduction, bool[2] output_mask, float floor=0.) "
      "-> (Tensor loss, Tensor grad_pred, Tensor grad_target)");
  m.def(
      "box_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, str kind, "
      "str box_format, float eps, str reduction, bool[2] output_mask, float floor=0.) "
      "-> (Tensor, Tensor)");
  m.def(
      "box_iou_matrix(Tensor boxes1, Tensor boxes2, str kind, str box_format, float eps, "
      "float floor=0.) -> Tensor");
  // the DETR matchers' cost, per image: [B, Q, max(sizes)], zeros beyond each image's targets
  m.def(
      "detr_match_cost(Tensor logits, Tensor pred_boxes, Tensor target_labels, "
      "Tensor target_boxes, int[] sizes, str class_kind, float class_cost, float bbox_cost, "
      "float giou_cost, float alpha, float gamma, str convention=\"transformers\") -> Tensor");
}
