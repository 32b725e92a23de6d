// The mask family (the prototype mask loss of YOLACT / ultralytics' YOLO segmentation):
// validated, device-independent arguments and the device entry points csrc/cpu and csrc/cuda
// implement. The formula: csrc/math/mask.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>
#include <tuple>

#include "../math/mask.h"
#include "common.h"

namespace detloss {

struct MaskArgs {
  at::Tensor coef;    // [P, nm], contiguous
  at::Tensor proto;   // [B, nm, H, W], contiguous, coef's dtype
  at::Tensor image;   // [P] int64: each positive's image
  at::Tensor boxes;   // [P, 4] opmath: xyxy in prototype pixels
  at::Tensor area;    // [P] opmath: the normalised box area
  at::Tensor masks;   // [G, H, W] opmath: overlap: G = B instance-index maps; else G masks
  at::Tensor index;   // [P] int64: overlap: the object (pixel value index + 1); else the mask row
  bool overlap = true;
  int64_t P = 0, nm = 0, B = 0, H = 0, W = 0, G = 0;
  Reduction reduction = Reduction::kMean;
};

MaskArgs prepare_mask(const at::Tensor& coef, const at::Tensor& proto,
                      const at::Tensor& batch_index, const at::Tensor& boxes,
                      const at::Tensor& area, const at::Tensor& masks,
                      const at::Tensor& mask_index, bool overlap, std::string_view reduction,
                      const char* op);

// One run of the kernels: the loss ('none': [P]; else 0-dim), and with `grad` the gradients
// of coef and proto for the upstream `up` (undefined: 1 for a reduced loss; 'none': [P],
// opmath, contiguous), the reduction's scale included.
using MaskTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
MaskTriple mask_run_cpu(const MaskArgs& a, bool grad, const at::Tensor& up);
MaskTriple mask_run_cuda(const MaskArgs& a, bool grad, const at::Tensor& up);

// The upstream gradient of the backward op: 0-dim for a reduced loss, else broadcastable to
// [P]; 'none' gives it to the kernel as [P] opmath (the prototypes' gradient sums over
// positives, so it cannot be scaled afterwards).
at::Tensor prepare_mask_grad(const at::Tensor& grad, const MaskArgs& a, const char* op);

#define DETLOSS_MASK_PARAMS                                                                 \
  const at::Tensor &coef, const at::Tensor &proto, const at::Tensor &batch_index,           \
      const at::Tensor &boxes, const at::Tensor &area, const at::Tensor &masks,             \
      const at::Tensor &mask_index, bool overlap, c10::string_view reduction
#define DETLOSS_MASK_ARGS_NO_RED \
  coef, proto, batch_index, boxes, area, masks, mask_index, overlap
#define DETLOSS_MASK_ARGS DETLOSS_MASK_ARGS_NO_RED, reduction

template <MaskTriple (*F)(const MaskArgs&, bool, const at::Tensor&)>
at::Tensor mask_loss_entry(DETLOSS_MASK_PARAMS) {
  const MaskArgs a = prepare_mask(DETLOSS_MASK_ARGS_NO_RED, sv(reduction),
                                  "detloss.prototype_mask_loss");
  return std::get<0>(F(a, false, at::Tensor()));
}

template <MaskTriple (*F)(const MaskArgs&, bool, const at::Tensor&)>
MaskTriple mask_loss_with_grad_entry(DETLOSS_MASK_PARAMS) {
  const MaskArgs a = prepare_mask(DETLOSS_MASK_ARGS_NO_RED, sv(reduction),
                                  "detloss.prototype_mask_loss_with_grad");
  return F(a, true, at::Tensor());
}

// 'mean'/'sum': the kernel at upstream 1, then scaled as the forward-computed gradients are
// (scale_by_upstream): a retained graph's second backward gives the first one's bits.
template <MaskTriple (*F)(const MaskArgs&, bool, const at::Tensor&)>
std::tuple<at::Tensor, at::Tensor> mask_backward_entry(const at::Tensor& grad,
                                                       DETLOSS_MASK_PARAMS) {
  constexpr const char* op = "detloss.prototype_mask_backward";
  const MaskArgs a = prepare_mask(DETLOSS_MASK_ARGS_NO_RED, sv(reduction), op);
  const at::Tensor up = prepare_mask_grad(grad, a, op);
  auto [loss, gc, gp] = F(a, true, a.reduction == Reduction::kNone ? up : at::Tensor());
  if (a.reduction != Reduction::kNone) {
    gc = scale_by_upstream(gc, grad, a.reduction, false, true);
    gp = scale_by_upstream(gp, grad, a.reduction, false, true);
  }
  return {gc, gp};
}

}  // namespace detloss
