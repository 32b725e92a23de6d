// The vectorised CPU loops of the classification family. Included only by the
// per-capability translation units (csrc/cpu/capability/*.cpp), which define CPU_CAPABILITY.
#pragma once

#if !defined(CPU_CAPABILITY)
#error "cls_vec.h is compiled once per CPU capability; include it from csrc/cpu/capability/"
#endif

#include "vec_ops.h"  // first: the Vectorized overloads of the dl_* shims

#include <algorithm>

#include "../math/cls.h"
#include "cls_kernel.h"

namespace detloss {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using math::ClsKind;

// One pass over [begin, end): loads, the shared formula (math::cls_element), the user's
// weight, then either the loss (stored and/or summed) or the input gradient.
template <class T, ClsKind K, bool FORWARD>
at::opmath_type<T> cls_loop(const ClsLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const V zero(O(0));
  const bool has_label = a.label.mode != OperandMode::kAbsent;
  simd::LaneSum<O> acc;
  for (int64_t i = begin; i < end; i += W) {
    const int64_t n = std::min<int64_t>(W, end - i);
    const V x = simd::load(a.x + i, n);
    const V t = simd::load(a.t + i, n);
    const V pw = simd::load_operand<O>(a.pos_weight, i, n, O(1));
    V pos = zero;
    if constexpr (K == ClsKind::kVFL)
      pos = has_label ? (simd::load_operand<O>(a.label, i, n, O(0)) != zero) : (t > zero);
    V loss, grad;
    math::cls_element<K, !FORWARD>(x, t, pw, pos, a.cfg, loss, grad);
    const V w = simd::load_operand<O>(a.weight, i, n, O(1));
    if constexpr (FORWARD) {
      loss = loss * w;
      if (a.out != nullptr) simd::store(a.out + i, loss, n);
      acc.add(n == W ? loss : V::set(zero, loss, n));  // tail lanes add 0
    } else {
      const V g = simd::load_operand<O>(a.grad, i, n, O(1)) * V(a.grad_scale);
      simd::store(a.out + i, grad * w * g, n);
    }
  }
  return static_cast<O>(acc.sum());
}

template <class T, bool FORWARD>
at::opmath_type<T> cls_kind_dispatch(const ClsLoopArgs<T>& a, int64_t begin, int64_t end) {
  switch (a.kind) {
    case ClsKind::kFocal: return cls_loop<T, ClsKind::kFocal, FORWARD>(a, begin, end);
    case ClsKind::kQFL: return cls_loop<T, ClsKind::kQFL, FORWARD>(a, begin, end);
    case ClsKind::kVFL: return cls_loop<T, ClsKind::kVFL, FORWARD>(a, begin, end);
    default: return cls_loop<T, ClsKind::kBCE, FORWARD>(a, begin, end);
  }
}

}  // namespace

#define DETLOSS_DEFINE_CLS_CPU(T)                                                       \
  at::opmath_type<T> cls_forward_range(const ClsLoopArgs<T>& a, int64_t b, int64_t e) { \
    return cls_kind_dispatch<T, true>(a, b, e);                                         \
  }                                                                                     \
  void cls_backward_range(const ClsLoopArgs<T>& a, int64_t b, int64_t e) {              \
    cls_kind_dispatch<T, false>(a, b, e);                                               \
  }

DETLOSS_DEFINE_CLS_CPU(float)
DETLOSS_DEFINE_CLS_CPU(double)
DETLOSS_DEFINE_CLS_CPU(c10::Half)
DETLOSS_DEFINE_CLS_CPU(c10::BFloat16)
#undef DETLOSS_DEFINE_CLS_CPU

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace detloss
