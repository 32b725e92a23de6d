// Schema and validation of the task-aligned assigner, shared by CPU and CUDA.
#include "assign.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace detloss {
namespace {

// [B, M, 1] or [B, M] -> [B, M]
at::Tensor per_box(const at::Tensor& t, int64_t B, int64_t M, const char* arg, const char* op) {
  const bool ok = (t.dim() == 3 && t.size(0) == B && t.size(1) == M && t.size(2) == 1) ||
                  (t.dim() == 2 && t.size(0) == B && t.size(1) == M);
  TORCH_CHECK_VALUE(ok, op, ": ", arg, " must have shape [B, M, 1] = [", B, ", ", M,
                    ", 1] (one per ground-truth box), got ", t.sizes());
  return t.dim() == 3 ? t.squeeze(-1) : t;
}

}  // namespace

TalArgs prepare_tal(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                    const at::Tensor& anc_points, const at::Tensor& gt_labels,
                    const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
                    int64_t topk2, double alpha, double beta, double stride_val, double eps,
                    bool scores_are_logits, const char* op, int64_t box_dim) {
  TalArgs a;
  a.box_dim = box_dim;
  const char* fmt = box_dim == 5 ? "xywhr" : "xyxy";
  TORCH_CHECK_TYPE(is_floating(pd_scores.scalar_type()), op, ": pd_scores must be a floating tensor, got ",
                   pd_scores.scalar_type());
  TORCH_CHECK_VALUE(pd_scores.dim() == 3, op, ": pd_scores must have shape [B, A, C] "
                    "(images, anchors, classes), got ", pd_scores.sizes());
  a.B = pd_scores.size(0);
  a.A = pd_scores.size(1);
  a.C = pd_scores.size(2);
  TORCH_CHECK_TYPE(is_floating(pd_bboxes.scalar_type()), op, ": pd_bboxes must be a floating tensor, got ",
                   pd_bboxes.scalar_type());
  TORCH_CHECK_VALUE(pd_bboxes.dim() == 3 && pd_bboxes.size(0) == a.B && pd_bboxes.size(1) == a.A &&
                        pd_bboxes.size(2) == box_dim,
                    op, ": pd_bboxes must have shape [B, A, ", box_dim, "] = [", a.B, ", ", a.A,
                    ", ", box_dim, "] (", fmt, ", like pd_scores' first two dims), got ",
                    pd_bboxes.sizes());
  TORCH_CHECK_TYPE(is_floating(anc_points.scalar_type()), op, ": anc_points must be a floating tensor, got ",
                   anc_points.scalar_type());
  TORCH_CHECK_VALUE(anc_points.dim() == 2 && anc_points.size(0) == a.A && anc_points.size(1) == 2,
                    op, ": anc_points must have shape [A, 2] = [", a.A, ", 2], got ",
                    anc_points.sizes());
  TORCH_CHECK_TYPE(is_floating(gt_bboxes.scalar_type()), op, ": gt_bboxes must be a floating tensor, got ",
                   gt_bboxes.scalar_type());
  TORCH_CHECK_VALUE(gt_bboxes.dim() == 3 && gt_bboxes.size(0) == a.B && gt_bboxes.size(2) == box_dim,
                    op, ": gt_bboxes must have shape [B, M, ", box_dim, "] with B = ", a.B, " (",
                    fmt, "), got ", gt_bboxes.sizes());
  a.M = gt_bboxes.size(1);
  TORCH_CHECK_TYPE(gt_labels.scalar_type() != at::kBool && !gt_labels.is_complex(), op,
                   ": gt_labels must hold class numbers (integer or floating), got ",
                   gt_labels.scalar_type());
  TORCH_CHECK_TYPE(!mask_gt.is_complex(), op, ": mask_gt must be bool or numeric, got ",
                   mask_gt.scalar_type());
  for (const auto* t : {&pd_bboxes, &anc_points, &gt_labels, &gt_bboxes, &mask_gt}) {
    TORCH_CHECK_VALUE(t->device() == pd_scores.device(), op,
                      ": all tensors must be on one device; pd_scores is on ", pd_scores.device(),
                      " but another is on ", t->device());
  }
  TORCH_CHECK_VALUE(topk >= 1 && topk <= math::kTalMaxTopk, op, ": topk must be in [1, ",
                    math::kTalMaxTopk, "], got ", topk);
  TORCH_CHECK_VALUE(topk2 >= 1 && topk2 <= math::kTalMaxTopk, op, ": topk2 must be in [1, ",
                    math::kTalMaxTopk, "], got ", topk2);
  TORCH_CHECK_VALUE(a.A >= topk, op, ": topk = ", topk, " needs at least as many anchors, got ",
                    a.A, " (torch.topk raises here too)");
  // the metric score^alpha · overlap^beta: a negative exponent of a zero score or overlap is
  // inf, and the normalised scores NaN
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0, op,
                    ": alpha must be a finite number >= 0 (an exponent of the scores), got ", alpha);
  TORCH_CHECK_VALUE(std::isfinite(beta) && beta >= 0, op,
                    ": beta must be a finite number >= 0 (an exponent of the overlaps), got ", beta);
  TORCH_CHECK_VALUE(std::isfinite(stride_val) && stride_val >= 0, op,
                    ": stride_val must be a finite number >= 0, got ", stride_val);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be a finite number >= 0, got ",
                    eps);
  a.topk = topk;
  a.topk2 = topk2;
  a.alpha = alpha;
  a.beta = beta;
  a.stride_val = stride_val;
  a.eps = eps;
  a.logits = scores_are_logits;

  // the arithmetic of the boxes: their promoted dtype, float32 for half/bf16 (see the README)
  const auto boxes = c10::promoteTypes(c10::promoteTypes(pd_bboxes.scalar_type(),
                                                         gt_bboxes.scalar_type()),
                                       anc_points.scalar_type());
  a.dtype = boxes == at::kDouble ? at::kDouble : at::kFloat;
  check_representable(alpha, a.dtype, "alpha", op);
  check_representable(beta, a.dtype, "beta", op);
  check_representable(stride_val, a.dtype, "stride_val", op);
  check_representable(eps, a.dtype, "eps", op);
  const auto as = [&](const at::Tensor& t) {
    return (t.scalar_type() == a.dtype ? t : t.to(a.dtype)).contiguous();
  };
  a.scores = pd_scores;  // read where a box's class is, at its strides: never copied
  a.pred = as(pd_bboxes);
  a.anchors = as(anc_points);
  a.gt = as(gt_bboxes);
  a.gt_dtype = gt_bboxes.scalar_type();
  a.out_dtype = c10::promoteTypes(pd_scores.scalar_type(),
                                  c10::promoteTypes(pd_bboxes.scalar_type(), gt_bboxes.scalar_type()));
  const at::Tensor lab = per_box(gt_labels, a.B, a.M, "gt_labels", op);
  a.labels = (lab.scalar_type() == at::kLong ? lab : lab.to(at::kLong)).contiguous();
  const at::Tensor mk = per_box(mask_gt, a.B, a.M, "mask_gt", op);
  a.valid = (mk.scalar_type() == at::kBool ? mk : mk.ne(0)).contiguous();
  return a;
}

TalArgs prepare_tal_seg(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                        const at::Tensor& anc_points, const at::Tensor& gt_labels,
                        const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                        const at::Tensor& pd_coef, const at::Tensor& mask_scale,
                        const at::Tensor& proto, const at::Tensor& gt_masks, int64_t topk,
                        int64_t topk2, double alpha, double beta, double stride_val, double eps,
                        bool scores_are_logits) {
  constexpr const char* op = "detloss.tal_assign_seg";
  TalArgs a = prepare_tal(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk,
                          topk2, alpha, beta, stride_val, eps, scores_are_logits, op);
  TORCH_CHECK_VALUE(3 * topk <= math::kTalMaxTopk, op, ": topk must be at most ",
                    math::kTalMaxTopk / 3, " for the mask-aware overlap (each box lists its 3·topk "
                    "best pairs, at most ", math::kTalMaxTopk, "), got ", topk);
  TORCH_CHECK_TYPE(is_floating(pd_coef.scalar_type()), op, ": pd_coef must be a floating tensor, got ",
                   pd_coef.scalar_type());
  TORCH_CHECK_VALUE(pd_coef.dim() == 3 && pd_coef.size(0) == a.B && pd_coef.size(1) == a.A &&
                        pd_coef.size(2) >= 1,
                    op, ": pd_coef must have shape [B, A, nm] = [", a.B, ", ", a.A,
                    ", nm] (each anchor's mask coefficients), got ", pd_coef.sizes());
  a.nm = pd_coef.size(2);
  TORCH_CHECK_TYPE(is_floating(proto.scalar_type()), op, ": proto must be a floating tensor, got ",
                   proto.scalar_type());
  TORCH_CHECK_VALUE(proto.dim() == 4 && proto.size(0) == a.B && proto.size(1) == a.nm, op,
                    ": proto must have shape [B, nm, H, W] with B = ", a.B, " and nm = ", a.nm,
                    " (pd_coef's last dim), got ", proto.sizes());
  a.H = proto.size(2);
  a.W = proto.size(3);
  TORCH_CHECK_TYPE(is_floating(mask_scale.scalar_type()), op,
                   ": mask_scale must be a floating tensor, got ", mask_scale.scalar_type());
  TORCH_CHECK_VALUE((mask_scale.dim() == 2 && mask_scale.size(0) == a.B && mask_scale.size(1) == 1) ||
                        (mask_scale.dim() == 1 && mask_scale.size(0) == a.B),
                    op, ": mask_scale must have shape [B, 1] = [", a.B,
                    ", 1] (prototype pixels per box pixel, per image), got ", mask_scale.sizes());
  TORCH_CHECK_TYPE(gt_masks.scalar_type() == at::kBool, op,
                   ": gt_masks must be a bool tensor (each box's binary ground-truth mask), got ",
                   gt_masks.scalar_type());
  TORCH_CHECK_VALUE(gt_masks.dim() == 4 && gt_masks.size(0) == a.B && gt_masks.size(1) >= a.M &&
                        gt_masks.size(2) == a.H && gt_masks.size(3) == a.W,
                    op, ": gt_masks must have shape [B, >= M, H, W] = [", a.B, ", >= ", a.M, ", ",
                    a.H, ", ", a.W, "] (a mask per box, at the prototypes' size), got ",
                    gt_masks.sizes());
  a.Mg = gt_masks.size(1);
  for (const auto* t : {&pd_coef, &mask_scale, &proto, &gt_masks}) {
    TORCH_CHECK_VALUE(t->device() == pd_scores.device(), op,
                      ": all tensors must be on one device; pd_scores is on ", pd_scores.device(),
                      " but another is on ", t->device());
  }
  const auto as = [&](const at::Tensor& t) { return t.scalar_type() == a.dtype ? t : t.to(a.dtype); };
  a.seg = true;
  a.coef = as(pd_coef);  // read at its strides: only the listed anchors' rows
  a.scale = as(mask_scale).reshape({a.B}).contiguous();
  a.proto = as(proto).contiguous();
  a.gt_masks = gt_masks.contiguous();
  a.seg_k = std::min<int64_t>(3 * topk, a.A);
  return a;
}

TalArgs prepare_tal_pose(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                         const at::Tensor& anc_points, const at::Tensor& gt_labels,
                         const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                         const at::Tensor& anc_strides, const at::Tensor& pd_kpts,
                         const at::Tensor& gt_kpts, const at::Tensor& sigmas, int64_t topk,
                         int64_t topk2, double alpha, double beta, double stride_val, double eps,
                         bool scores_are_logits, double level_lo, double level_hi) {
  constexpr const char* op = "detloss.tal_assign_pose";
  TalArgs a = prepare_tal(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk,
                          topk2, alpha, beta, stride_val, eps, scores_are_logits, op);
  TORCH_CHECK_TYPE(is_floating(anc_strides.scalar_type()), op,
                   ": anc_strides must be a floating tensor, got ", anc_strides.scalar_type());
  TORCH_CHECK_VALUE((anc_strides.dim() == 1 && anc_strides.size(0) == a.A) ||
                        (anc_strides.dim() == 2 && anc_strides.size(0) == a.A && anc_strides.size(1) == 1),
                    op, ": anc_strides must have shape [A] = [", a.A,
                    "] (each anchor's stride), got ", anc_strides.sizes());
  TORCH_CHECK_TYPE(is_floating(pd_kpts.scalar_type()), op, ": pd_kpts must be a floating tensor, got ",
                   pd_kpts.scalar_type());
  TORCH_CHECK_VALUE(pd_kpts.dim() == 4 && pd_kpts.size(0) == a.B && pd_kpts.size(1) == a.A &&
                        pd_kpts.size(2) >= 1 && pd_kpts.size(3) == 2,
                    op, ": pd_kpts must have shape [B, A, K, 2] = [", a.B, ", ", a.A,
                    ", K, 2] (each anchor's keypoints, pixels), got ", pd_kpts.sizes());
  a.nkpt = pd_kpts.size(2);
  TORCH_CHECK_TYPE(is_floating(gt_kpts.scalar_type()), op, ": gt_kpts must be a floating tensor, got ",
                   gt_kpts.scalar_type());
  TORCH_CHECK_VALUE(gt_kpts.dim() == 4 && gt_kpts.size(0) == a.B && gt_kpts.size(1) >= a.M &&
                        gt_kpts.size(2) == a.nkpt && gt_kpts.size(3) == 3,
                    op, ": gt_kpts must have shape [B, >= M, K, 3] = [", a.B, ", >= ", a.M, ", ",
                    a.nkpt, ", 3] (each box's keypoints: x, y, visibility), got ", gt_kpts.sizes());
  TORCH_CHECK_TYPE(is_floating(sigmas.scalar_type()), op, ": sigmas must be a floating tensor, got ",
                   sigmas.scalar_type());
  TORCH_CHECK_VALUE(sigmas.dim() == 1 && sigmas.size(0) == a.nkpt, op,
                    ": sigmas must have shape [K] = [", a.nkpt, "] (one per keypoint), got ",
                    sigmas.sizes());
  TORCH_CHECK_VALUE(!std::isnan(level_lo) && !std::isnan(level_hi), op,
                    ": level_range must be two numbers (lo, hi), got (", level_lo, ", ", level_hi, ")");
  for (const auto* t : {&anc_strides, &pd_kpts, &gt_kpts, &sigmas}) {
    TORCH_CHECK_VALUE(t->device() == pd_scores.device(), op,
                      ": all tensors must be on one device; pd_scores is on ", pd_scores.device(),
                      " but another is on ", t->device());
  }
  const auto as = [&](const at::Tensor& t) { return t.scalar_type() == a.dtype ? t : t.to(a.dtype); };
  a.pose = true;
  // ultralytics' operations, in its dtypes, then the arithmetic's (csrc/math/assign.h)
  a.kpt_pd = as(pd_kpts.to(at::kFloat));  // pd_kpts[b, a].float(); read at its strides
  a.kpt_gt = as(gt_kpts.narrow(1, 0, a.M)).contiguous();
  const at::Tensor wh = gt_bboxes.narrow(-1, 2, 2).sub(gt_bboxes.narrow(-1, 0, 2));
  const at::Tensor area = wh.prod(-1, /*keepdim=*/true);  // [B, M, 1]
  a.gate_side = as(area.squeeze(-1).clamp_min(0).sqrt()).contiguous();
  a.kpt_den = as(sigmas.mul(2).pow(2).mul(area.mul(0.53).add(eps)).mul(2)).contiguous();  // [B, M, K]
  const at::Tensor s = anc_strides.reshape({a.A});
  a.gate_lo = as(s.mul(level_lo)).contiguous();
  a.gate_hi = as(s.mul(level_hi)).contiguous();
  a.gate_open = s.eq(s.min()).to(at::kByte).add(s.eq(s.max()).to(at::kByte).mul(2)).contiguous();
  return a;
}

}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "tal_assign(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, int topk, int topk2, float alpha, float beta, "
      "float stride_val, float eps, bool scores_are_logits) -> (Tensor target_labels, "
      "Tensor target_bboxes, Tensor target_score, Tensor fg_mask, Tensor target_gt_idx)");
  m.def(
      "tal_assign_rotated(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, int topk, int topk2, float alpha, float beta, "
      "float stride_val, float eps, bool scores_are_logits) -> (Tensor target_labels, "
      "Tensor target_bboxes, Tensor target_score, Tensor fg_mask, Tensor target_gt_idx)");
  m.def(
      "tal_assign_seg(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, Tensor pd_coef, Tensor mask_scale, Tensor proto, "
      "Tensor gt_masks, int topk, int topk2, float alpha, float beta, float stride_val, "
      "float eps, bool scores_are_logits) -> (Tensor target_labels, Tensor target_bboxes, "
      "Tensor target_score, Tensor fg_mask, Tensor target_gt_idx)");
  m.def(
      "tal_assign_pose(Tensor pd_scores, Tensor pd_bboxes, Tensor anc_points, Tensor gt_labels, "
      "Tensor gt_bboxes, Tensor mask_gt, Tensor anc_strides, Tensor pd_kpts, Tensor gt_kpts, "
      "Tensor sigmas, int topk, int topk2, float alpha, float beta, float stride_val, float eps, "
      "bool scores_are_logits, float level_lo, float level_hi) -> (Tensor target_labels, "
      "Tensor target_bboxes, Tensor target_score, Tensor fg_mask, Tensor target_gt_idx)");
}
