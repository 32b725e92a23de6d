// The vectorised CPU loops of the box family: W pairs per step, the four coordinates
// gathered into one vector each (boxes are stored as rows), the shared formula
// (math::box_element), the results scattered back. Included only by csrc/cpu/capability/.
#pragma once

#if !defined(CPU_CAPABILITY)
#error "box_vec.h is compiled once per CPU capability; include it from csrc/cpu/capability/"
#endif

#include "vec_ops.h"  // first: the Vectorized overloads of the dl_* shims

#include <algorithm>

#include "../math/box.h"
#include "box_kernel.h"

namespace detloss {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

using math::BoxKind;

// Coordinates of rows i .. i+count of a row operand (R values a row), as one vector per
// coordinate (lanes past count are 0: a zero box gives finite values in every formula
// but the rotated CIoU's w/h, whose lanes are never stored).
template <int R, class O, class T>
void gather_rows(const Operand<T>& o, int64_t i, int64_t count, at::vec::Vectorized<O>* v) {
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  O c[R][W] = {};
  if (o.mode == OperandMode::kFull && count == W) {  // the common case: de-interleave rows
    const T* p = o.ptr + R * i;
    for (int64_t j = 0; j < W; ++j)
      for (int k = 0; k < R; ++k) c[k][j] = static_cast<O>(p[R * j + k]);
  } else {
    for (int64_t j = 0; j < count; ++j) {
      const T* p = o.ptr + R * math::operand_index(o, i + j);
      for (int k = 0; k < R; ++k) c[k][j] = static_cast<O>(p[k]);
    }
  }
  for (int k = 0; k < R; ++k) v[k] = V::loadu(c[k]);
}

template <int R, class O, class T>
void scatter_rows(T* out, const at::vec::Vectorized<O>* v, int64_t count) {
  using V = at::vec::Vectorized<O>;
  O c[R][V::size()];
  for (int k = 0; k < R; ++k) v[k].store(c[k]);
  for (int64_t j = 0; j < count; ++j)
    for (int k = 0; k < R; ++k) out[R * j + k] = static_cast<T>(c[k][j]);
}

// One pass over pairs [begin, end): the loss (stored and/or summed) and, with GRAD, the
// gradients for an upstream gradient of 1 (the 'mean' scale included).
template <class T, BoxKind K, bool GRAD>
at::opmath_type<T> box_loop(const BoxLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  constexpr int R = math::box_row(K);
  const V zero(O(0)), one(O(1));
  simd::LaneSum<O> acc;
  for (int64_t i = begin; i < end; i += W) {
    const int64_t n = std::min<int64_t>(W, end - i);
    V pa[R], pb[R], ga[R], gb[R];
    gather_rows<R, O>(a.pred, i, n, pa);
    gather_rows<R, O>(a.target, i, n, pb);
    const V w = simd::load_operand<O>(a.weight, i, n, O(1));
    // loss = (1 - metric)·w: the metric's upstream gradient is -w·scale
    const V metric = math::box_pair<K, GRAD>(pa, pb, a.eps, a.floor, a.xywh,
                                             zero - w * V(a.grad_scale), ga, gb);
    const V loss = (one - metric) * w;
    if (a.out != nullptr) simd::store(a.out + i, loss, n);
    acc.add(n == W ? loss : V::set(zero, loss, n));
    if constexpr (GRAD) {
      if (a.grad_pred != nullptr) scatter_rows<R, O>(a.grad_pred + R * i, ga, n);
      if (a.grad_target != nullptr) scatter_rows<R, O>(a.grad_target + R * i, gb, n);
    }
  }
  return static_cast<O>(acc.sum());
}

template <class T, bool GRAD>
at::opmath_type<T> box_kind_dispatch(const BoxLoopArgs<T>& a, int64_t b, int64_t e) {
  return math::with_box_kind(a.kind, [&](auto k) { return box_loop<T, k.value, GRAD>(a, b, e); });
}

// Rows [begin, end) of the B·N rows of the matrix: box n against all M boxes of its batch.
template <class T, BoxKind K>
void matrix_rows(const BoxMatrixLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  constexpr int R = math::box_row(K);
  Operand<T> col;
  col.mode = OperandMode::kFull;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t batch = r / a.n;
    const T* p = a.boxes1 + R * r;
    V pa[R], pb[R], unused[R];
    for (int k = 0; k < R; ++k) pa[k] = V(static_cast<O>(p[k]));
    col.ptr = a.boxes2 + R * batch * a.m;
    T* out = a.out + r * a.m;
    for (int64_t j = 0; j < a.m; j += W) {
      const int64_t n = std::min<int64_t>(W, a.m - j);
      gather_rows<R, O>(col, j, n, pb);
      simd::store(out + j,
                  math::box_pair<K, false>(pa, pb, a.eps, a.floor, a.xywh, V(O(0)), unused, unused),
                  n);
    }
  }
}

template <class T>
void matrix_kind_dispatch(const BoxMatrixLoopArgs<T>& a, int64_t b, int64_t e) {
  return math::with_box_kind(a.kind, [&](auto k) { return matrix_rows<T, k.value>(a, b, e); });
}

}  // namespace

#define DETLOSS_DEFINE_BOX_CPU(T)                                                            \
  at::opmath_type<T> box_forward_range(const BoxLoopArgs<T>& a, int64_t b, int64_t e) {      \
    return box_kind_dispatch<T, false>(a, b, e);                                             \
  }                                                                                          \
  at::opmath_type<T> box_forward_grad_range(const BoxLoopArgs<T>& a, int64_t b, int64_t e) { \
    return box_kind_dispatch<T, true>(a, b, e);                                              \
  }                                                                                          \
  void box_matrix_rows(const BoxMatrixLoopArgs<T>& a, int64_t b, int64_t e) {           \
    matrix_kind_dispatch<T>(a, b, e);                                                   \
  }

DETLOSS_DEFINE_BOX_CPU(float)
DETLOSS_DEFINE_BOX_CPU(double)
DETLOSS_DEFINE_BOX_CPU(c10::Half)
DETLOSS_DEFINE_BOX_CPU(c10::BFloat16)
#undef DETLOSS_DEFINE_BOX_CPU

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace detloss
