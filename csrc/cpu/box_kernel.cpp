// CPU kernels of the box family: output allocation, deterministic chunking, parallelism;
// the vectorised loops are in box_vec.h, chosen per CPU at run time.
#include "box_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../ops/box.h"
#include "parallel.h"

#include <limits>

namespace detloss {
namespace cpu {
namespace {

constexpr int64_t kBoxChunk = int64_t(1) << 12;  // pairs per partial sum / task

template <typename T>
BoxLoopArgs<T> loop_args(const BoxArgs& a) {
  using O = at::opmath_type<T>;
  BoxLoopArgs<T> la;
  la.pred = a.pred.typed<T>();
  la.target = a.target.typed<T>();
  la.weight = a.weight.typed<T>();
  la.kind = a.kind;
  la.xywh = a.xywh;
  la.eps = static_cast<O>(a.eps);
  la.floor = static_cast<O>(a.floor);
  return la;
}

std::vector<int64_t> with_row(const BoxArgs& a) {
  std::vector<int64_t> s(a.shape);
  s.push_back(a.row);
  return s;
}

}  // namespace

at::Tensor box_forward(const BoxArgs& a) {
  const int64_t n = a.numel();
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.options) : at::empty(a.shape, a.options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.options.dtype().toScalarType(),
                                  "detloss_box_forward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    BoxLoopArgs<scalar_t> la = loop_args<scalar_t>(a);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(n, kBoxChunk, reduce, a.reduction == Reduction::kMean, o,
                                    [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(box_forward_range, la, b, e);
    });
  });
  return out;
}

BoxTriple box_forward_grad(const BoxArgs& a, bool with_loss, bool need_pred, bool need_target) {
  const int64_t n = a.numel();
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out, gp, gt;
  if (with_loss) out = reduce ? at::empty({}, a.options) : at::empty(a.shape, a.options);
  if (need_pred) gp = at::empty(with_row(a), a.options);
  if (need_target) gt = at::empty(with_row(a), a.options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.options.dtype().toScalarType(),
                                  "detloss_box_forward_grad_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    BoxLoopArgs<scalar_t> la = loop_args<scalar_t>(a);
    la.grad_scale = reduction_scale<O>(a.reduction, n);
    la.grad_pred = need_pred ? gp.mutable_data_ptr<scalar_t>() : nullptr;
    la.grad_target = need_target ? gt.mutable_data_ptr<scalar_t>() : nullptr;
    const auto range = [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(box_forward_grad_range, la, b, e);
    };
    if (!with_loss) {
      chunked_for(n, kBoxChunk, range);
      return;
    }
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(n, kBoxChunk, reduce, a.reduction == Reduction::kMean, o, range);
  });
  return {out, gp, gt};
}

at::Tensor box_matrix(const BoxMatrixArgs& a) {
  const int64_t B = a.boxes1.size(0), N = a.boxes1.size(1), M = a.boxes2.size(1);
  at::Tensor out = at::empty({B, N, M}, a.boxes1.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.boxes1.scalar_type(),
                                  "detloss_box_matrix_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    BoxMatrixLoopArgs<scalar_t> la;
    la.boxes1 = a.boxes1.const_data_ptr<scalar_t>();
    la.boxes2 = a.boxes2.const_data_ptr<scalar_t>();
    la.out = out.mutable_data_ptr<scalar_t>();
    la.n = N;
    la.m = M;
    la.kind = a.kind;
    la.xywh = a.xywh;
    la.eps = static_cast<O>(a.eps);
    la.floor = static_cast<O>(a.floor);
    const int64_t grain = std::max<int64_t>(1, kBoxChunk / std::max<int64_t>(M, 1));
    chunked_for(B * N, grain, [&](int64_t b, int64_t e) {
      DETLOSS_CPU_DISPATCH(box_matrix_rows, la, b, e);
    });
  });
  return a.batched ? out : out.squeeze(0);
}

// The DETR matchers' cost: a row (image b, query q) a task unit, its softmax statistics once,
// then its image's targets (math::match_pair_cost); NaN and ±inf as the convention replaces
// them (math::match_invalid).
at::Tensor match_cost(const MatchCostArgs& a) {
  const int64_t B = a.B, Q = a.Q, C = a.C, Tm = a.Tmax;
  at::Tensor out = at::empty({B, Q, Tm}, a.logits.options());
  const int64_t* lab = a.labels.const_data_ptr<int64_t>();
  for (int64_t t = 0; a.w.kind != math::MatchClass::kGiven && t < a.T; ++t)
    TORCH_CHECK_VALUE(lab[t] >= 0 && lab[t] < C, "detloss.detr_match_cost: target_labels must be "
                      "in [0, C) = [0, ", C, "), got ", lab[t], " (target ", t, ")");
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "detloss_match_cost_cpu", [&] {
    using S = at::opmath_type<scalar_t>;
    const math::MatchWeights<S> w = a.w.as<S>();
    const scalar_t* x = a.logits.const_data_ptr<scalar_t>();
    const scalar_t* pb = a.pred.const_data_ptr<scalar_t>();
    const scalar_t* tb = a.target.const_data_ptr<scalar_t>();
    const int64_t* off = a.offsets.const_data_ptr<int64_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t big = math::match_invalid(w, std::numeric_limits<scalar_t>::max());
    at::parallel_for(0, B * Q, std::max<int64_t>(1, 4096 / std::max<int64_t>(Tm, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / Q;
        const scalar_t* xr = x + r * C;
        S mx = S(0), sum = S(1);
        if (w.kind == math::MatchClass::kSoftmax) math::match_softmax_stats(xr, C, 1, mx, sum);
        S p[4];
        for (int k = 0; k < 4; ++k) p[k] = static_cast<S>(pb[4 * r + k]);
        scalar_t* orow = o + r * Tm;
        const int64_t n = off[b + 1] - off[b];
        for (int64_t j = 0; j < n; ++j) {
          const int64_t t = off[b] + j;
          const S cls = math::match_class(static_cast<S>(xr[math::match_column(j, lab[t], w)]),
                                          mx, sum, w);
          S g[4];
          for (int k = 0; k < 4; ++k) g[k] = static_cast<S>(tb[4 * t + k]);
          orow[j] = math::match_store(math::match_pair_cost(p, g, cls, w), big);
        }
        for (int64_t j = n; j < Tm; ++j) orow[j] = scalar_t(0);
      }
    });
  });
  return out;
}

}  // namespace cpu

at::Tensor match_cost_cpu(const MatchCostArgs& a) { return cpu::match_cost(a); }

at::Tensor box_forward_cpu(const BoxArgs& a) { return cpu::box_forward(a); }
BoxTriple box_forward_grad_cpu(const BoxArgs& a, bool with_loss, bool need_pred,
                               bool need_target) {
  return cpu::box_forward_grad(a, with_loss, need_pred, need_target);
}
at::Tensor box_matrix_cpu(const BoxMatrixArgs& a) { return cpu::box_matrix(a); }

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, CPU, m) {
  m.impl("box_loss", &detloss::box_loss_entry<detloss::box_forward_cpu>);
  m.impl("box_loss_with_grad", &detloss::box_loss_with_grad_entry<detloss::box_forward_grad_cpu>);
  m.impl("box_backward", &detloss::box_backward_entry<detloss::box_forward_grad_cpu>);
  m.impl("box_iou_matrix", &detloss::box_matrix_entry<detloss::box_matrix_cpu>);
  m.impl("detr_match_cost", &detloss::match_cost_entry<detloss::match_cost_cpu>);
}
