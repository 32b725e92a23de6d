// CPU kernels of the classification family: output allocation, deterministic chunking and
// parallelism here; the vectorised loops are in cls_vec.h, chosen per CPU at run time.
#include "cls_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

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
  la.weight = a.weight.typed<T>();
  la.pos_weight = a.pos_weight.typed<T>();
  la.label = a.label.typed<uint8_t>();
  la.kind = a.kind;
  la.cfg = a.config<O>();
  if (a.index) {
    la.labels = a.labels.const_data_ptr<int64_t>();
    la.score = a.score.defined() ? a.score.const_data_ptr<T>() : nullptr;
    la.classes = a.classes;
    la.ignore_index = a.ignore_index;
    la.class_major = a.class_major;
    la.inner = a.inner;
  } else {
    la.t = a.target.const_data_ptr<T>();
  }
  return la;
}

// Class-major index form: each anchor's label as a number the vector loop compares with a
// class (labels outside [0, C) are background: -1; ignore_index: -2).
template <typename O>
std::vector<O> class_codes(const ClsArgs& a) {
  std::vector<O> code;
  if (!a.index || !a.class_major) return code;
  const int64_t n = a.labels.numel();
  code.resize(n);
  const int64_t* l = a.labels.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    code[i] = l[i] == a.ignore_index ? O(-2)
              : (l[i] >= 0 && l[i] < a.classes) ? static_cast<O>(l[i]) : O(-1);
  return code;
}

// What 'mean' divides by: every element (dense), or C x the non-ignored anchors (index).
int64_t mean_divisor(const ClsArgs& a) { return a.index ? a.mean_count : a.numel(); }

}  // namespace

at::Tensor cls_forward(const ClsArgs& a) {
  const int64_t n = a.numel();
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.input.options())
                          : cls_like_input(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_forward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    ClsLoopArgs<scalar_t> la = loop_args<scalar_t>(a);
    const std::vector<O> code = class_codes<O>(a);
    la.code = code.data();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(n, kChunk, reduce,
                                    a.reduction == Reduction::kMean ? mean_divisor(a) : -1, o,
                                    [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(cls_forward_range, la, b, e);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cls_forward_grad(const ClsArgs& a, bool with_loss) {
  const int64_t n = a.numel();
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out;
  if (with_loss) out = reduce ? at::empty({}, a.input.options()) : cls_like_input(a);
  at::Tensor grad = cls_like_input(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_forward_grad_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    ClsLoopArgs<scalar_t> la = loop_args<scalar_t>(a);
    const std::vector<O> code = class_codes<O>(a);
    la.code = code.data();
    la.grad = grad.mutable_data_ptr<scalar_t>();
    la.grad_scale = a.reduction == Reduction::kMean
                        ? reduction_scale<O>(Reduction::kMean, mean_divisor(a)) : O(1);
    const auto range = [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(cls_forward_grad_range, la, b, e);
    };
    if (!with_loss) {
      chunked_for(n, kChunk, range);
      return;
    }
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(n, kChunk, reduce,
                                    a.reduction == Reduction::kMean ? mean_divisor(a) : -1, o,
                                    range);
  });
  return {out, grad};
}

}  // namespace cpu

at::Tensor cls_forward_cpu(const ClsArgs& a) { return cpu::cls_forward(a); }
std::tuple<at::Tensor, at::Tensor> cls_forward_grad_cpu(const ClsArgs& a, bool with_loss) {
  return cpu::cls_forward_grad(a, with_loss);
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, CPU, m) {
  m.impl("cls_loss", &detloss::cls_loss_entry<detloss::cls_forward_cpu>);
  m.impl("cls_loss_with_grad", &detloss::cls_loss_with_grad_entry<detloss::cls_forward_grad_cpu>);
  m.impl("cls_backward", &detloss::cls_backward_entry<detloss::cls_forward_grad_cpu>);
}
