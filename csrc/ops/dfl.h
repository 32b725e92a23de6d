// The distribution family (DFL, the distribution integral): validated, device-independent
// arguments and the device entry points csrc/cpu and csrc/cuda implement.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "../math/dfl.h"
#include "common.h"
#include "layout.h"

namespace detloss {

struct DflArgs {
  at::Tensor pred;    // [rows, R] contiguous, or bin-major (dfl_bin_major) where kept
  at::Tensor target;  // [rows] contiguous, opmath dtype (loss only); [rows, 2] where split
  bool split = false;  // target [..., 2]: (left bin, right bin's weight), D-FINE's FGL
  at::Tensor stats;   // backward: what the forward saved per row, opmath, contiguous
                      // [rows, 2]: the loss' (max z, sum exp(z - max)); the integral's
                      // (lse, mean)
  OperandDesc weight;
  std::vector<int64_t> shape;  // the leading dims: the unreduced loss / the integral
  int64_t rows = 0;
  int32_t bins = 0;
  Reduction reduction = Reduction::kMean;
};

DflArgs prepare_dfl(const at::Tensor& pred, const std::optional<at::Tensor>& target,
                    const std::optional<at::Tensor>& weight, std::string_view reduction,
                    const char* op, bool keep_bin_major = false);

// The bin-major layout: pred [..., R] whose bins are strided and whose rows run along a
// unit-stride leading dim, densely packed: ultralytics' [B, 4·R, A] box output, permuted to
// [B, A, 4·R] and viewed as [B, A, 4, R]. The CPU integral reads it in place (in tiles
// transposed in cache) and writes its gradient in the same layout, where a copy to rows
// would transpose the whole tensor twice (forward and gradient). Up to kDflBinMajorMaxBins
// bins (the tiles live on the stack). The dim of unit stride, or -1. (detloss_cuda/_ops.py's
// dfl_bin_major is this rule for the fake kernels.)
inline int64_t dfl_bin_major_dim(const at::Tensor& p) {
  if (p.dim() < 2 || p.numel() == 0 || p.stride(-1) == 1 || p.size(-1) > kDflBinMajorMaxBins ||
      !p.is_non_overlapping_and_dense()) {
    return -1;
  }
  for (int64_t d = 0; d + 1 < p.dim(); ++d) {
    if (p.stride(d) == 1 && p.size(d) > 1) return d;
  }
  return -1;
}
// An upstream gradient for the loss (checked only) or the integral (also described for the
// kernel to read in place).
void check_dfl_grad(const at::Tensor& grad, const DflArgs& a, const char* op);
OperandDesc prepare_dfl_grad(const at::Tensor& grad, const DflArgs& a, const char* op);

// Forwards return (result, stats): the loss per row ('none', shaped a.shape) or reduced, and
// per row (max z, sum exp(z - max)) (opmath, [..., 2]); the integral (a.shape) and per row
// (lse, mean) (opmath, [..., 2]). The stats make the backward one pass with no reductions.
// Backwards: d/d(pred), shaped like pred.
using DflPair = std::tuple<at::Tensor, at::Tensor>;
DflPair dfl_forward_cpu(const DflArgs& a);
at::Tensor dfl_backward_cpu(const DflArgs& a, const OperandDesc& grad);
DflPair dfl_integral_cpu(const DflArgs& a);
at::Tensor dfl_integral_backward_cpu(const DflArgs& a, const OperandDesc& grad);
DflPair dfl_forward_cuda(const DflArgs& a);
at::Tensor dfl_backward_cuda(const DflArgs& a, const OperandDesc& grad);
DflPair dfl_integral_cuda(const DflArgs& a);
at::Tensor dfl_integral_backward_cuda(const DflArgs& a, const OperandDesc& grad);

// The loss, its stats, and d(loss)/d(pred) for an upstream gradient of 1 ('mean' scale
// included), in one pass (CPU: each row's backward runs while it is still in cache; CUDA:
// from the row's max and sum while they are in registers).
using DflTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
DflTriple dfl_forward_with_grad_cpu(const DflArgs& a);
DflTriple dfl_forward_with_grad_cuda(const DflArgs& a);

// The stats a backward reads, checked against pred.
void check_dfl_stats(const at::Tensor& stats, DflArgs& a, int64_t per_row, const char* op);


// The distillation KL (math::dfl_kl_row): pred and teacher [..., R] (teacher in pred's
// dtype, contiguous), temperature > 0; forward: the loss per row (pred's dtype, the leading
// shape) and per row (lse of z/T, lse of u/T) (opmath, [..., 2]); backward: d/d(pred) for an
// upstream per row.
struct DflKlArgs {
  at::Tensor pred, teacher, stats, grad;  // grad: [rows] contiguous, pred's dtype (backward)
  std::vector<int64_t> shape;
  int64_t rows = 0;
  int32_t bins = 0;
  double temperature = 1.0;
};
DflKlArgs prepare_dfl_kl(const at::Tensor& pred, const at::Tensor& teacher, double temperature,
                         const char* op);
DflPair dfl_kl_cpu(const DflKlArgs& a);
at::Tensor dfl_kl_backward_cpu(const DflKlArgs& a);
DflPair dfl_kl_cuda(const DflKlArgs& a);
at::Tensor dfl_kl_backward_cuda(const DflKlArgs& a);
void prepare_dfl_kl_backward(DflKlArgs& a, const at::Tensor& grad, const at::Tensor& stats,
                             const char* op);

template <DflPair (*F)(const DflKlArgs&)>
DflPair dfl_kl_entry(const at::Tensor& pred, const at::Tensor& teacher, double temperature) {
  return F(prepare_dfl_kl(pred, teacher, temperature, "detloss.dfl_kl"));
}

template <at::Tensor (*F)(const DflKlArgs&)>
at::Tensor dfl_kl_backward_entry(const at::Tensor& grad, const at::Tensor& pred,
                                 const at::Tensor& teacher, const at::Tensor& stats,
                                 double temperature) {
  constexpr const char* op = "detloss.dfl_kl_backward";
  DflKlArgs a = prepare_dfl_kl(pred, teacher, temperature, op);
  prepare_dfl_kl_backward(a, grad, stats, op);
  return F(a);
}

template <DflPair (*F)(const DflArgs&)>
DflPair dfl_loss_entry(const at::Tensor& pred, const at::Tensor& target,
                       const std::optional<at::Tensor>& weight, c10::string_view reduction) {
  return F(prepare_dfl(pred, target, weight, sv(reduction), "detloss.dfl_loss"));
}

template <DflTriple (*F)(const DflArgs&)>
DflTriple dfl_loss_with_grad_entry(const at::Tensor& pred, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight,
                                   c10::string_view reduction) {
  return F(prepare_dfl(pred, target, weight, sv(reduction), "detloss.dfl_loss_with_grad"));
}

// The gradient from the saved stats at upstream 1 (the arithmetic of dfl_loss_with_grad),
// then scaled by the upstream one as a forward-computed gradient is (scale_by_upstream):
// a retained graph's second backward gives the first one's bits.
template <at::Tensor (*F)(const DflArgs&, const OperandDesc&)>
at::Tensor dfl_backward_entry(const at::Tensor& grad, const at::Tensor& pred,
                              const at::Tensor& target, const at::Tensor& stats,
                              const std::optional<at::Tensor>& weight,
                              c10::string_view reduction) {
  constexpr const char* op = "detloss.dfl_backward";
  DflArgs a = prepare_dfl(pred, target, weight, sv(reduction), op);
  check_dfl_stats(stats, a, 2, op);
  check_dfl_grad(grad, a, op);  // (scale_by_upstream reads it as it is: no copy to check it)
  return scale_by_upstream(F(a, OperandDesc()), grad, a.reduction, true, true);
}

template <DflPair (*F)(const DflArgs&), bool KeepBinMajor = false>
DflPair dfl_integral_entry(const at::Tensor& pred) {
  return F(prepare_dfl(pred, std::nullopt, std::nullopt, "none", "detloss.dfl_integral",
                       KeepBinMajor));
}

template <at::Tensor (*F)(const DflArgs&, const OperandDesc&), bool KeepBinMajor = false>
at::Tensor dfl_integral_backward_entry(const at::Tensor& grad, const at::Tensor& pred,
                                       const at::Tensor& stats) {
  constexpr const char* op = "detloss.dfl_integral_backward";
  DflArgs a = prepare_dfl(pred, std::nullopt, std::nullopt, "none", op, KeepBinMajor);
  check_dfl_stats(stats, a, 2, op);
  return F(a, prepare_dfl_grad(grad, a, op));
}

}  // namespace detloss
