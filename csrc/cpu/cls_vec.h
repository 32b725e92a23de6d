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

// The shared formula on one vector of elements and what is done with its results: the
// user's weight, the loss stored ('none') and summed, the gradient stored (GRAD).
template <class T, ClsKind K, bool GRAD>
struct ClsVecStep {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  const ClsLoopArgs<T>& a;
  simd::LaneSum<O>& acc;

  void operator()(int64_t i, int64_t n, const V& x, const V& t, const V& pos) const {
    constexpr int64_t W = V::size();
    const V pw = simd::load_operand<O>(a.pos_weight, i, n, O(1));
    V loss, grad;
    math::cls_element<K, GRAD>(x, t, pw, pos, a.cfg, loss, grad);
    const V w = simd::load_operand<O>(a.weight, i, n, O(1));
    loss = loss * w;
    if (a.out != nullptr) simd::store(a.out + i, loss, n);
    acc.add(n == W ? loss : V::set(V(O(0)), loss, n));  // tail lanes add 0
    if constexpr (GRAD) simd::store(a.grad + i, grad * w * V(a.grad_scale), n);
  }
};

// Dense targets: one pass over [begin, end).
template <class T, ClsKind K, bool GRAD>
at::opmath_type<T> cls_loop(const ClsLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const V zero(O(0));
  const bool has_label = a.label.mode != OperandMode::kAbsent;
  simd::LaneSum<O> acc;
  const ClsVecStep<T, K, GRAD> step{a, acc};
  for (int64_t i = begin; i < end; i += W) {
    const int64_t n = std::min<int64_t>(W, end - i);
    const V t = simd::load(a.t + i, n);
    V pos = zero;
    if constexpr (K == ClsKind::kVFL)
      pos = has_label ? (simd::load_operand<O>(a.label, i, n, O(0)) != zero) : (t > zero);
    step(i, n, simd::load(a.x + i, n), t, pos);
  }
  return static_cast<O>(acc.sum());
}

// Class-index targets, row by row (a row = one anchor's C logits): the target vector is
// zero but for the labelled class's lane (score, or 1), which is also VFL's positive; an
// ignored row stores zeros and adds nothing.
template <class T, ClsKind K, bool GRAD>
at::opmath_type<T> cls_index_loop(const ClsLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const V zero(O(0));
  const int64_t C = a.classes;
  simd::LaneSum<O> acc;
  const ClsVecStep<T, K, GRAD> step{a, acc};
  for (int64_t i = begin; i < end;) {
    const int64_t row = i / C, row_start = row * C;
    const int64_t row_end = std::min(end, row_start + C);
    const int64_t lab = a.labels[row];
    if (lab == a.ignore_index) {
      if (a.out != nullptr) std::fill(a.out + i, a.out + row_end, T(0));
      if constexpr (GRAD) std::fill(a.grad + i, a.grad + row_end, T(0));
      i = row_end;
      continue;
    }
    const O sc = a.score != nullptr ? static_cast<O>(a.score[row]) : O(1);
    for (int64_t n; i < row_end; i += n) {
      n = std::min<int64_t>(W, row_end - i);
      const int64_t lane = lab - (i - row_start);  // the labelled class's lane, if in [0, n)
      V t = zero, pos = zero;
      if (lane >= 0 && lane < n) {
        O tb[W] = {}, pb[W] = {};
        tb[lane] = sc;
        pb[lane] = O(1);
        t = V::loadu(tb);
        if constexpr (K == ClsKind::kVFL) pos = V::loadu(pb) != zero;
      }
      step(i, n, simd::load(a.x + i, n), t, pos);
    }
  }
  return static_cast<O>(acc.sum());
}

// Class-index targets on class-major logits (memory order [..., C, A]): a vector holds
// consecutive anchors of one class; their codes (the label as a number, -1 background, -2
// ignored: cls_kernel.cpp) are compared with that class in the vector unit.
template <class T, ClsKind K, bool GRAD>
at::opmath_type<T> cls_index_cm_loop(const ClsLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const V zero(O(0));
  const int64_t A = a.inner, C = a.classes;
  simd::LaneSum<O> acc;
  for (int64_t i = begin; i < end;) {
    const int64_t row = i / A;  // (image, class)
    const int64_t c = row % C, anchor0 = (row / C) * A;
    const int64_t row_end = std::min(end, (row + 1) * A);
    const V cv(static_cast<O>(c));
    for (int64_t n; i < row_end; i += n) {
      n = std::min<int64_t>(W, row_end - i);
      const int64_t a0 = anchor0 + (i - row * A);
      // the anchors' codes against this class: the target, VFL's positives, the ignored
      const V code = V::loadu(a.code + a0, n);
      const V hit = code == cv;
      const V live = code != V(O(-2));
      const V sc = a.score != nullptr ? simd::load(a.score + a0, n) : V(O(1));
      const V t = V::blendv(zero, sc, hit);
      V pos = zero;
      if constexpr (K == ClsKind::kVFL) pos = hit;
      // the step on this vector, ignored anchors masked to 0 (loss and gradient)
      const V pw(O(1));
      V loss, grad;
      math::cls_element<K, GRAD>(simd::load(a.x + i, n), t, pw, pos, a.cfg, loss, grad);
      loss = V::blendv(zero, loss, live);
      if (a.out != nullptr) simd::store(a.out + i, loss, n);
      acc.add(n == W ? loss : V::set(zero, loss, n));
      if constexpr (GRAD) simd::store(a.grad + i, V::blendv(zero, grad * V(a.grad_scale), live), n);
    }
  }
  return static_cast<O>(acc.sum());
}

template <class T, bool GRAD>
at::opmath_type<T> cls_kind_dispatch(const ClsLoopArgs<T>& a, int64_t begin, int64_t end) {
#define DETLOSS_CLS_LOOP(K)                                                                \
  (a.labels == nullptr ? cls_loop<T, K, GRAD>(a, begin, end)                               \
   : a.class_major     ? cls_index_cm_loop<T, K, GRAD>(a, begin, end)                      \
                       : cls_index_loop<T, K, GRAD>(a, begin, end))
  switch (a.kind) {
    case ClsKind::kFocal: return DETLOSS_CLS_LOOP(ClsKind::kFocal);
    case ClsKind::kQFL: return DETLOSS_CLS_LOOP(ClsKind::kQFL);
    case ClsKind::kVFL: return DETLOSS_CLS_LOOP(ClsKind::kVFL);
    default: return DETLOSS_CLS_LOOP(ClsKind::kBCE);
  }
#undef DETLOSS_CLS_LOOP
}

}  // namespace

#define DETLOSS_DEFINE_CLS_CPU(T)                                                           \
  at::opmath_type<T> cls_forward_range(const ClsLoopArgs<T>& a, int64_t b, int64_t e) {     \
    return cls_kind_dispatch<T, false>(a, b, e);                                            \
  }                                                                                         \
  at::opmath_type<T> cls_forward_grad_range(const ClsLoopArgs<T>& a, int64_t b, int64_t e) { \
    return cls_kind_dispatch<T, true>(a, b, e);                                             \
  }

DETLOSS_DEFINE_CLS_CPU(float)
DETLOSS_DEFINE_CLS_CPU(double)
DETLOSS_DEFINE_CLS_CPU(c10::Half)
DETLOSS_DEFINE_CLS_CPU(c10::BFloat16)
#undef DETLOSS_DEFINE_CLS_CPU

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace detloss
