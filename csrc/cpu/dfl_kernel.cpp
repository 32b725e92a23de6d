// CPU kernels of the distribution family: output allocation, deterministic chunking,
// parallelism; the vectorised loops are in dfl_vec.h, chosen per CPU at run time.
#include "dfl_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../ops/dfl.h"
#include "parallel.h"

namespace detloss {
namespace cpu {
namespace {

int64_t rows_per_chunk(int32_t bins) { return std::max<int64_t>(64, kChunk / bins); }

template <typename T>
DflLoopArgs<T> loop_args(const DflArgs& a, bool integral) {
  DflLoopArgs<T> la;
  la.pred = a.pred.const_data_ptr<T>();
  if (!integral) la.target = a.target.const_data_ptr<at::opmath_type<T>>();
  la.weight = a.weight.typed<T>();
  la.bins = a.bins;
  la.integral = integral;
  return la;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const DflArgs& a, bool integral,
                                                       bool with_grad) {
  const bool reduce = !integral && a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.pred.options()) : at::empty(a.shape, a.pred.options());
  std::vector<int64_t> sshape(a.shape);
  sshape.push_back(2);
  at::Tensor stats =
      at::empty(sshape, a.pred.options().dtype(at::toOpMathType(a.pred.scalar_type())));
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(),
                                  "detloss_dfl_forward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    DflLoopArgs<scalar_t> la = loop_args<scalar_t>(a, integral);
    la.stats_out = stats.mutable_data_ptr<O>();
    if (with_grad) {
      grad = at::empty(a.pred.sizes(), a.pred.options());
      la.grad_out = grad.mutable_data_ptr<scalar_t>();
      la.grad_scale = reduction_scale<O>(a.reduction, a.rows);
    }
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(a.rows, rows_per_chunk(a.bins), reduce,
                                    a.reduction == Reduction::kMean, o,
                                    [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(dfl_forward_rows, la, b, e);
    });
  });
  return {out, stats, grad};
}

at::Tensor backward(const DflArgs& a, const OperandDesc& grad, bool integral) {
  at::Tensor gz = at::empty(a.pred.sizes(), a.pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(),
                                  "detloss_dfl_backward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    DflLoopArgs<scalar_t> la = loop_args<scalar_t>(a, integral);
    la.grad = grad.typed<scalar_t>();
    la.grad_scale = integral ? O(1) : reduction_scale<O>(a.reduction, a.rows);
    la.stats = a.stats.const_data_ptr<O>();
    la.out = gz.mutable_data_ptr<scalar_t>();
    chunked_for(a.rows, rows_per_chunk(a.bins), [&](int64_t b, int64_t e) {
      DETLOSS_CPU_DISPATCH(dfl_backward_rows, la, b, e);
    });
  });
  return gz;
}

}  // namespace
}  // namespace cpu

DflPair dfl_forward_cpu(const DflArgs& a) {
  auto [out, stats, grad] = cpu::forward(a, false, false);
  return {out, stats};
}
DflTriple dfl_forward_with_grad_cpu(const DflArgs& a) {
  return cpu::forward(a, false, true);
}
at::Tensor dfl_backward_cpu(const DflArgs& a, const OperandDesc& g) {
  return cpu::backward(a, g, false);
}
DflPair dfl_integral_cpu(const DflArgs& a) {
  auto [out, stats, grad] = cpu::forward(a, true, false);
  return {out, stats};
}
at::Tensor dfl_integral_backward_cpu(const DflArgs& a, const OperandDesc& g) {
  return cpu::backward(a, g, true);
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("dfl_loss", &detloss::dfl_loss_entry<detloss::dfl_forward_cpu>);
  m.impl("dfl_loss_with_grad", &detloss::dfl_loss_with_grad_entry<detloss::dfl_forward_with_grad_cpu>);
  m.impl("dfl_backward", &detloss::dfl_backward_entry<detloss::dfl_backward_cpu>);
  m.impl("dfl_integral", &detloss::dfl_integral_entry<detloss::dfl_integral_cpu>);
  m.impl("dfl_integral_backward",
         &detloss::dfl_integral_backward_entry<detloss::dfl_integral_backward_cpu>);
}
