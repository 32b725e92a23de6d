// The mask family (the prototype mask loss of YOLACT / ultralytics' YOLO segmentation):
// validated, device-independent arguments and the device entry points csrc/cpu and csrc/cuda
// implement. The formula: csrc/math/mask.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "../math/mask.h"
#include "common.h"

namespace detloss {

// The positives have leading dims (the loss' shape for 'none'): a list [P], or every anchor
// of a batch [B, A] with `positive` saying which count (what ultralytics' fg_mask says):
// the others have no loss and a zero gradient, are not counted by 'mean', and their indices
// are never read. No data-dependent shape anywhere: a compiled step does not break.
struct MaskArgs {
  at::Tensor coef;    // [P, nm], contiguous (the leading dims flattened)
  at::Tensor proto;   // [B, nm, H, W], contiguous, coef's dtype
  at::Tensor image;   // [P] int64: each positive's image
  at::Tensor boxes;   // [P, 4] opmath: xyxy in prototype pixels
  at::Tensor area;    // [P] opmath: the normalised box area
  at::Tensor masks;   // [G, H, W] opmath: overlap: G = B instance-index maps; else G masks
  at::Tensor index;   // [P] int64: overlap: the object (pixel value index + 1); else the mask row
  at::Tensor keep;    // [P] bool, or undefined: every one is a positive
  std::vector<int64_t> shape;  // the leading dims of coef
  bool overlap = true;
  int64_t P = 0, nm = 0, B = 0, H = 0, W = 0, G = 0;
  Reduction reduction = Reduction::kMean;
};

MaskArgs prepare_mask(const at::Tensor& coef, const at::Tensor& proto,
                      const at::Tensor& batch_index, const at::Tensor& boxes,
                      const at::Tensor& area, const at::Tensor& masks,
                      const at::Tensor& mask_index, bool overlap, std::string_view reduction,
                      const std::optional<at::Tensor>& positive, const char* op);

// One run of the kernels: the loss ('none': shaped a.shape; else 0-dim), and with `grad` the gradients
// of coef and proto for the upstream `up` (undefined: 1 for a reduced loss; 'none': [P],
// opmath, contiguous), the reduction's scale included.
using MaskTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
MaskTriple mask_run_cpu(const MaskArgs& a, bool grad, const at::Tensor& up);
MaskTriple mask_run_cuda(const MaskArgs& a, bool grad, const at::Tensor& up);

// The upstream gradient of the backward op: 0-dim for a reduced loss, else broadcastable to
// the loss' shape; 'none' gives it to the kernel as [P] opmath (the prototypes' gradient sums over
// positives, so it cannot be scaled afterwards).
at::Tensor prepare_mask_grad(const at::Tensor& grad, const MaskArgs& a, const char* op);

#define DETLOSS_MASK_PARAMS                                                                 \
  const at::Tensor &coef, const at::Tensor &proto, const at::Tensor &batch_index,           \
      const at::Tensor &boxes, const at::Tensor &area, const at::Tensor &masks,             \
      const at::Tensor &mask_index, bool overlap, c10::string_view reduction,                \
      const std::optional<at::Tensor>&positive
#define DETLOSS_MASK_ARGS_NO_RED \
  coef, proto, batch_index, boxes, area, masks, mask_index, overlap
#define DETLOSS_MASK_ARGS DETLOSS_MASK_ARGS_NO_RED, reduction, positive

// The kernels' flat [P] loss and [P, nm] gradient, shaped like the inputs' leading dims.
inline at::Tensor shaped_loss(const MaskArgs& a, const at::Tensor& loss) {
  return a.reduction == Reduction::kNone ? loss.view(a.shape) : loss;
}
inline at::Tensor shaped_coef(const MaskArgs& a, const at::Tensor& g) {
  std::vector<int64_t> s(a.shape);
  s.push_back(a.nm);
  return g.view(s);
}

template <MaskTriple (*F)(const MaskArgs&, bool, const at::Tensor&)>
at::Tensor mask_loss_entry(DETLOSS_MASK_PARAMS) {
  const MaskArgs a = prepare_mask(DETLOSS_MASK_ARGS_NO_RED, sv(reduction), positive,
                                  "detloss.prototype_mask_loss");
  return shaped_loss(a, std::get<0>(F(a, false, at::Tensor())));
}

template <MaskTriple (*F)(const MaskArgs&, bool, const at::Tensor&)>
MaskTriple mask_loss_with_grad_entry(DETLOSS_MASK_PARAMS) {
  const MaskArgs a = prepare_mask(DETLOSS_MASK_ARGS_NO_RED, sv(reduction), positive,
                                  "detloss.prototype_mask_loss_with_grad");
  auto [loss, gc, gp] = F(a, true, at::Tensor());
  return {shaped_loss(a, loss), shaped_coef(a, gc), gp};
}

// 'mean'/'sum': the kernel at upstream 1, then scaled as the forward-computed gradients are
// (scale_by_upstream): a retained graph's second backward gives the first one's bits.
template <MaskTriple (*F)(const MaskArgs&, bool, const at::Tensor&)>
std::tuple<at::Tensor, at::Tensor> mask_backward_entry(const at::Tensor& grad,
                                                       DETLOSS_MASK_PARAMS) {
  constexpr const char* op = "detloss.prototype_mask_backward";
  const MaskArgs a = prepare_mask(DETLOSS_MASK_ARGS_NO_RED, sv(reduction), positive, op);
  const at::Tensor up = prepare_mask_grad(grad, a, op);
  auto [loss, gc, gp] = F(a, true, a.reduction == Reduction::kNone ? up : at::Tensor());
  if (a.reduction != Reduction::kNone) {
    gc = scale_by_upstream(gc, grad, a.reduction, false, true);
    gp = scale_by_upstream(gp, grad, a.reduction, false, true);
  }
  return {shaped_coef(a, gc), gp};
}

}  // namespace detloss
