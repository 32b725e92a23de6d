// CPU kernels of the classification family: output allocation, deterministic chunking and
// parallelism here; the vectorised loops are in cls_vec.h, chosen per CPU at run time.
#include "cls_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../ops/cls.h"
#include "parallel.h"

namespace detloss {
namespace cpu {
namespace {

template <typename T>
ClsLoopArgs<T> loop_args(const ClsArgs& a) {
  using O = at::opmath_type<T>;
  ClsLoopArgs<T> la;
  la.x = a.input.const_data_ptr<T>();
  la.t = a.target.const_data_ptr<T>();
  la.weight = a.weight.typed<T>();
  la.pos_weight = a.pos_weight.typed<T>();
  la.label = a.label.typed<uint8_t>();
  la.kind = a.kind;
  la.cfg = a.config<O>();
  return la;
}

}  // namespace

at::Tensor cls_forward(const ClsArgs& a) {
  const int64_t n = a.numel();
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.input.options())
                          : at::empty(a.input.sizes(), a.input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_forward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    ClsLoopArgs<scalar_t> la = loop_args<scalar_t>(a);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(n, kChunk, reduce, a.reduction == Reduction::kMean, o,
                                    [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(cls_forward_range, la, b, e);
    });
  });
  return out;
}

at::Tensor cls_backward(const ClsArgs& a, const OperandDesc& grad) {
  const int64_t n = a.numel();
  at::Tensor grad_input = at::empty(a.input.sizes(), a.input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_backward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    ClsLoopArgs<scalar_t> la = loop_args<scalar_t>(a);
    la.grad = grad.typed<scalar_t>();
    la.grad_scale = reduction_scale<O>(a.reduction, n);
    la.out = grad_input.mutable_data_ptr<scalar_t>();
    chunked_for(n, kChunk, [&](int64_t b, int64_t e) {
      DETLOSS_CPU_DISPATCH(cls_backward_range, la, b, e);
    });
  });
  return grad_input;
}

}  // namespace cpu

at::Tensor cls_forward_cpu(const ClsArgs& a) { return cpu::cls_forward(a); }
at::Tensor cls_backward_cpu(const ClsArgs& a, const OperandDesc& grad) {
  return cpu::cls_backward(a, grad);
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(detloss, CPU, m) {
  m.impl("cls_loss", &detloss::cls_loss_entry<detloss::cls_forward_cpu>);
  m.impl("cls_backward", &detloss::cls_backward_entry<detloss::cls_backward_cpu>);
}
