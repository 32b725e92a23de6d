// The box family (IoU, GIoU, DIoU, CIoU, ProbIoU losses; the pairwise metric matrix): validated,
// device-independent arguments and the device entry points csrc/cpu and csrc/cuda implement.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "../math/box.h"
#include "common.h"

namespace detloss {

struct BoxArgs {
  OperandDesc pred, target;  // rows of `row`, in pred's dtype
  OperandDesc weight;
  std::vector<int64_t> shape;  // the unreduced loss: broadcast of the leading dims
  at::TensorOptions options;   // dtype and device of the loss
  math::BoxKind kind = math::BoxKind::kIoU;
  int row = 4;        // 4 (xyxy, xywh) or 5 (xywhr: the rotated kinds)
  bool xywh = false;
  double eps = 1e-7;
  double floor = 0;   // ProbIoU: added to each variance (w²/12, h²/12)
  Reduction reduction = Reduction::kMean;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
};

BoxArgs prepare_box(const at::Tensor& pred, const at::Tensor& target,
                    const std::optional<at::Tensor>& weight, std::string_view kind,
                    std::string_view box_format, double eps, std::string_view reduction,
                    double floor);
// The upstream gradient of box_loss: 0-dim for 'mean'/'sum', broadcastable to the pairs for
// 'none'.
void check_box_grad(const at::Tensor& grad, const BoxArgs& a);

struct BoxMatrixArgs {
  at::Tensor boxes1, boxes2;  // [B, N, row], [B, M, row], contiguous, one floating dtype
  bool batched = false;
  math::BoxKind kind = math::BoxKind::kIoU;
  int row = 4;
  bool xywh = false;
  double eps = 1e-7;
  double floor = 0;
};

BoxMatrixArgs prepare_box_matrix(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                 std::string_view kind, std::string_view box_format,
                                 double eps, double floor);

// Device kernels. forward: 1 - metric per pair ('none', shaped a.shape) or its mean/sum.
// forward_grad: the same (undefined unless with_loss) and, in the same pass, d(loss)/d(pred)
// and d(loss)/d(target) for an upstream gradient of 1 ('mean' scale included), each
// [shape..., row] (the caller sums them to the inputs' shapes), undefined where not asked for.
// The DETR matchers' cost (math::match_pair_cost): per image b, its queries against its own
// targets only, [B, Q, Tmax] (zeros beyond image b's sizes[b] targets); the given class
// kind: logits is the class-cost block [B, Q, Tmax] itself.
struct MatchCostArgs {
  at::Tensor logits;   // [B, Q, C] contiguous, in `dtype`
  at::Tensor pred;     // [B, Q, 4] cxcywh, contiguous, in `dtype`
  at::Tensor labels;   // [T] int64 contiguous
  at::Tensor target;   // [T, 4] cxcywh, contiguous, in `dtype`
  at::Tensor offsets;  // [B + 1] int64 on the device: image b's targets [offsets[b], offsets[b + 1])
  int64_t B = 0, Q = 0, C = 0, T = 0, Tmax = 0;
  math::MatchWeights<double> w{};
  at::ScalarType dtype = at::kFloat;
};

MatchCostArgs prepare_match_cost(const at::Tensor& logits, const at::Tensor& pred_boxes,
                                 const at::Tensor& target_labels, const at::Tensor& target_boxes,
                                 at::IntArrayRef sizes, std::string_view class_kind,
                                 double class_weight, double bbox_weight, double giou_weight,
                                 double alpha, double gamma, std::string_view convention);

using BoxTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
at::Tensor box_forward_cpu(const BoxArgs& a);
BoxTriple box_forward_grad_cpu(const BoxArgs& a, bool with_loss, bool need_pred,
                               bool need_target);
at::Tensor box_matrix_cpu(const BoxMatrixArgs& a);
at::Tensor box_forward_cuda(const BoxArgs& a);
BoxTriple box_forward_grad_cuda(const BoxArgs& a, bool with_loss, bool need_pred,
                                bool need_target);
at::Tensor box_matrix_cuda(const BoxMatrixArgs& a);
at::Tensor match_cost_cpu(const MatchCostArgs& a);
at::Tensor match_cost_cuda(const MatchCostArgs& a);

template <at::Tensor (*F)(const MatchCostArgs&)>
at::Tensor match_cost_entry(const at::Tensor& logits, const at::Tensor& pred_boxes,
                            const at::Tensor& target_labels, const at::Tensor& target_boxes,
                            at::IntArrayRef sizes, c10::string_view class_kind,
                            double class_weight, double bbox_weight, double giou_weight,
                            double alpha, double gamma, c10::string_view convention) {
  return F(prepare_match_cost(logits, pred_boxes, target_labels, target_boxes, sizes,
                              std::string_view(class_kind.data(), class_kind.size()), class_weight,
                              bbox_weight, giou_weight, alpha, gamma,
                              std::string_view(convention.data(), convention.size())));
}

template <at::Tensor (*Forward)(const BoxArgs&)>
at::Tensor box_loss_entry(const at::Tensor& pred, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight, c10::string_view kind,
                          c10::string_view box_format, double eps, c10::string_view reduction,
                          double floor) {
  return Forward(
      prepare_box(pred, target, weight, sv(kind), sv(box_format), eps, sv(reduction), floor));
}

template <BoxTriple (*ForwardGrad)(const BoxArgs&, bool, bool, bool)>
BoxTriple box_loss_with_grad_entry(const at::Tensor& pred, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight, c10::string_view kind,
                                   c10::string_view box_format, double eps,
                                   c10::string_view reduction, std::array<bool, 2> output_mask,
                                   double floor) {
  return ForwardGrad(
      prepare_box(pred, target, weight, sv(kind), sv(box_format), eps, sv(reduction), floor),
      true, output_mask[0], output_mask[1]);
}

// The recomputing backward: the gradients at upstream 1, then scaled as the forward-computed
// ones are (scale_by_upstream), so both give the same bits.
template <BoxTriple (*ForwardGrad)(const BoxArgs&, bool, bool, bool)>
std::tuple<at::Tensor, at::Tensor> box_backward_entry(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, c10::string_view kind, c10::string_view box_format,
    double eps, c10::string_view reduction, std::array<bool, 2> output_mask, double floor) {
  const BoxArgs a =
      prepare_box(pred, target, weight, sv(kind), sv(box_format), eps, sv(reduction), floor);
  check_box_grad(grad, a);
  auto [loss, gp, gt] = ForwardGrad(a, false, output_mask[0], output_mask[1]);
  if (gp.defined()) gp = scale_by_upstream(gp, grad, a.reduction, true, true);
  if (gt.defined()) gt = scale_by_upstream(gt, grad, a.reduction, true, true);
  return {gp, gt};
}

template <at::Tensor (*Matrix)(const BoxMatrixArgs&)>
at::Tensor box_matrix_entry(const at::Tensor& boxes1, const at::Tensor& boxes2,
                            c10::string_view kind, c10::string_view box_format, double eps,
                            double floor) {
  return Matrix(prepare_box_matrix(boxes1, boxes2, sv(kind), sv(box_format), eps, floor));
}

}  // namespace detloss
