// The task-aligned assigner: validated, device-independent arguments and the device entry
// points csrc/cpu and csrc/cuda implement (the algorithm: csrc/math/assign.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "../math/assign.h"
#include "common.h"

namespace detloss {

struct TalArgs {
  at::Tensor scores;    // [B, A, C], any floating dtype and strides (read in place)
  at::Tensor pred;      // [B, A, box_dim] contiguous, in `dtype`
  at::Tensor anchors;   // [A, 2] contiguous, in `dtype`
  at::Tensor gt;        // [B, M, box_dim] contiguous, in `dtype`
  at::Tensor labels;    // [B, M] int64 contiguous (ultralytics' .long() of gt_labels)
  at::Tensor valid;     // [B, M] bool contiguous
  at::ScalarType dtype;      // the arithmetic: float (float32 / half / bf16 boxes) or double
  at::ScalarType gt_dtype;   // target_bboxes' dtype: gt_bboxes'
  at::ScalarType out_dtype;  // target_score's: the alignment metric's (scores and boxes promoted)
  int64_t B = 0, A = 0, M = 0, C = 0;
  int64_t topk = 13, topk2 = 13;
  double alpha = 1.0, beta = 6.0, stride_val = 16.0, eps = 1e-9;
  bool logits = false;
  int64_t box_dim = 4;   // 4: xyxy (CIoU); 5: xywhr (ProbIoU, tal_assign_rotated)
  // the mask-aware overlap (tal_assign_seg; csrc/math/assign.h), when `seg`
  bool seg = false;
  at::Tensor coef;       // [B, A, nm] in `dtype`, at its strides
  at::Tensor scale;      // [B] in `dtype`
  at::Tensor proto;      // [B, nm, H, W] contiguous, in `dtype`
  at::Tensor gt_masks;   // [B, Mg, H, W] bool contiguous
  int64_t nm = 0, H = 0, W = 0, Mg = 0;
  int64_t seg_k = 0;     // min(3·topk, A): each box's listed pairs
  // the keypoint overlap and level gate (tal_assign_pose; csrc/math/assign.h), when `pose`
  bool pose = false;
  at::Tensor kpt_pd;     // [B, A, K, 2] in `dtype` (rounded to float32 first), at its strides
  at::Tensor kpt_gt;     // [B, M, K, 3] contiguous, in `dtype`
  at::Tensor kpt_den;    // [B, M, K] contiguous, in `dtype`: (2·sigma)² · (0.53·area + eps) · 2
  at::Tensor gate_side;  // [B, M] contiguous, in `dtype`: sqrt(max(w·h, 0))
  at::Tensor gate_lo;    // [A] in `dtype`: lo · stride
  at::Tensor gate_hi;    // [A] in `dtype`: hi · stride
  at::Tensor gate_open;  // [A] uint8: bit 0 the finest level, bit 1 the coarsest
  int64_t nkpt = 0;
};

TalArgs prepare_tal(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                    const at::Tensor& anc_points, const at::Tensor& gt_labels,
                    const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
                    int64_t topk2, double alpha, double beta, double stride_val, double eps,
                    bool scores_are_logits, const char* op = "detloss.tal_assign",
                    int64_t box_dim = 4);

TalArgs prepare_tal_seg(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                        const at::Tensor& anc_points, const at::Tensor& gt_labels,
                        const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                        const at::Tensor& pd_coef, const at::Tensor& mask_scale,
                        const at::Tensor& proto, const at::Tensor& gt_masks, int64_t topk,
                        int64_t topk2, double alpha, double beta, double stride_val, double eps,
                        bool scores_are_logits);

TalArgs prepare_tal_pose(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                         const at::Tensor& anc_points, const at::Tensor& gt_labels,
                         const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                         const at::Tensor& anc_strides, const at::Tensor& pd_kpts,
                         const at::Tensor& gt_kpts, const at::Tensor& sigmas, int64_t topk,
                         int64_t topk2, double alpha, double beta, double stride_val, double eps,
                         bool scores_are_logits, double level_lo, double level_hi);

// (target_labels int64 [B, A], target_bboxes [B, A, 4], target_score [B, A] (the normalised
// alignment metric of the assigned box; 0 for background), fg_mask bool [B, A],
// target_gt_idx int64 [B, A]): ultralytics' outputs but for the [B, A, C] target scores,
// which are one_hot(target_labels) * target_score where fg_mask (detloss_cuda/assign.py).
using TalResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
TalResult tal_assign_cpu(const TalArgs& a);
TalResult tal_assign_cuda(const TalArgs& a);

// BoxDim 4: tal_assign (xyxy); 5: tal_assign_rotated (xywhr).
template <TalResult (*F)(const TalArgs&), int64_t BoxDim = 4>
TalResult tal_assign_entry(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                           const at::Tensor& anc_points, const at::Tensor& gt_labels,
                           const at::Tensor& gt_bboxes, const at::Tensor& mask_gt, int64_t topk,
                           int64_t topk2, double alpha, double beta, double stride_val,
                           double eps, bool scores_are_logits) {
  return F(prepare_tal(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk,
                       topk2, alpha, beta, stride_val, eps, scores_are_logits,
                       BoxDim == 5 ? "detloss.tal_assign_rotated" : "detloss.tal_assign", BoxDim));
}

template <TalResult (*F)(const TalArgs&)>
TalResult tal_assign_seg_entry(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                               const at::Tensor& anc_points, const at::Tensor& gt_labels,
                               const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                               const at::Tensor& pd_coef, const at::Tensor& mask_scale,
                               const at::Tensor& proto, const at::Tensor& gt_masks, int64_t topk,
                               int64_t topk2, double alpha, double beta, double stride_val,
                               double eps, bool scores_are_logits) {
  return F(prepare_tal_seg(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                           pd_coef, mask_scale, proto, gt_masks, topk, topk2, alpha, beta,
                           stride_val, eps, scores_are_logits));
}

template <TalResult (*F)(const TalArgs&)>
TalResult tal_assign_pose_entry(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                                const at::Tensor& anc_points, const at::Tensor& gt_labels,
                                const at::Tensor& gt_bboxes, const at::Tensor& mask_gt,
                                const at::Tensor& anc_strides, const at::Tensor& pd_kpts,
                                const at::Tensor& gt_kpts, const at::Tensor& sigmas, int64_t topk,
                                int64_t topk2, double alpha, double beta, double stride_val,
                                double eps, bool scores_are_logits, double level_lo,
                                double level_hi) {
  return F(prepare_tal_pose(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            anc_strides, pd_kpts, gt_kpts, sigmas, topk, topk2, alpha, beta,
                            stride_val, eps, scores_are_logits, level_lo, level_hi));
}

// The keypoint overlap's and the gate's inputs of a pose call (a.pose) into the view, for
// either driver; gated: the driver's [B, M] buffer of the gate pass.
template <class S, class TS>
void tal_pose_view(const TalArgs& a, math::TalView<S, TS>& v, const uint8_t* gated) {
  v.kpt_pd = a.kpt_pd.const_data_ptr<S>();
  for (int d = 0; d < 4; ++d) v.kpt_pd_stride[d] = a.kpt_pd.stride(d);
  v.kpt_gt = a.kpt_gt.const_data_ptr<S>();
  v.kpt_den = a.kpt_den.const_data_ptr<S>();
  v.nkpt = a.nkpt;
  v.gate_side = a.gate_side.const_data_ptr<S>();
  v.gate_lo = a.gate_lo.const_data_ptr<S>();
  v.gate_hi = a.gate_hi.const_data_ptr<S>();
  v.gate_open = a.gate_open.const_data_ptr<uint8_t>();
  v.gated = gated;
}

// The mask IoU's inputs of a seg call (a.seg), for either driver; pred: the boxes in `dtype`.
template <class S>
math::TalSegView<S> tal_seg_view(const TalArgs& a, const S* pred) {
  math::TalSegView<S> sv{};
  sv.coef = a.coef.const_data_ptr<S>();
  for (int d = 0; d < 3; ++d) sv.coef_stride[d] = a.coef.stride(d);
  sv.proto = a.proto.const_data_ptr<S>();
  sv.gt_masks = a.gt_masks.const_data_ptr<bool>();
  sv.scale = a.scale.const_data_ptr<S>();
  sv.pred = pred;
  sv.A = a.A;
  sv.M = a.M;
  sv.Mg = a.Mg;
  sv.nm = a.nm;
  sv.H = a.H;
  sv.W = a.W;
  return sv;
}

}  // namespace detloss
