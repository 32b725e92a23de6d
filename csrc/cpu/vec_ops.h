// at::vec::Vectorized overloads of the dl_* shims used by csrc/math/, plus typed loads and
// stores (with fp16/bf16 <-> fp32 conversion) and operand loads for the CPU SIMD loops.
// Include this before any csrc/math/ header: the formulas find these overloads by
// ordinary lookup at their definition.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "../math/config.h"

namespace detloss {
namespace math {
inline namespace DETLOSS_CAPABILITY_NS {

template <class T>
using Vec = at::vec::Vectorized<T>;

template <class T> inline Vec<T> dl_exp(const Vec<T>& x) { return x.exp(); }
template <class T> inline Vec<T> dl_expm1(const Vec<T>& x) { return x.expm1(); }
template <class T> inline Vec<T> dl_log(const Vec<T>& x) { return x.log(); }
template <class T> inline Vec<T> dl_sqrt(const Vec<T>& x) { return x.sqrt(); }
template <class T> inline Vec<T> dl_cos(const Vec<T>& x) { return x.cos(); }
template <class T> inline Vec<T> dl_sin(const Vec<T>& x) { return x.sin(); }
template <class T> inline void dl_sincos(const Vec<T>& x, Vec<T>& s, Vec<T>& c) {
  s = x.sin();
  c = x.cos();
}
// log1p(x) for x in [0, 1] (the softplus term log1p(exp(-|x|))), without a log call:
//   log1p(x) = 2·atanh(s) = 2s·(1 + s^2/3 + s^4/5 + ...),  s = x / (2 + x) in [0, 1/3],
// the series cut where its tail is below half an ulp (s^2 <= 1/9: 7 terms for float, 16 for
// double), evaluated with FMAs. A few ulp. (ATen's Sleef log1p and logf are several times
// slower than exp and dominated the loss.)
template <class T> inline Vec<T> dl_log1p_unit(const Vec<T>& x) {
  constexpr int kTerms = sizeof(T) == 4 ? 7 : 16;
  const Vec<T> s = x / (Vec<T>(T(2)) + x);
  const Vec<T> s2 = s * s;
  Vec<T> p(T(1) / T(2 * kTerms - 1));
  for (int k = kTerms - 2; k >= 0; --k) p = at::vec::fmadd(p, s2, Vec<T>(T(1) / T(2 * k + 1)));
  return Vec<T>(T(2)) * s * p;
}
template <class T> inline Vec<T> dl_abs(const Vec<T>& x) { return x.abs(); }
template <class T> inline Vec<T> dl_pow(const Vec<T>& x, const Vec<T>& y) { return x.pow(y); }
template <class T> inline Vec<T> dl_atan(const Vec<T>& x) { return x.atan(); }
template <class T> inline Vec<T> dl_max(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::maximum(a, b);  // NaN-propagating, like the scalar dl_max
}
template <class T> inline Vec<T> dl_min(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::minimum(a, b);
}
// mask lanes are all-ones (true) or all-zeros (false), as Vectorized comparisons return
template <class T> inline Vec<T> dl_where(const Vec<T>& mask, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, mask);
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss

#include "../ops/operand.h"

namespace detloss {
// Not detloss::cpu: that namespace holds the non-inline per-capability entry points.
namespace simd {
inline namespace DETLOSS_CAPABILITY_NS {

template <class T>
using opmath_t = at::opmath_type<T>;
template <class T>
using OVec = at::vec::Vectorized<opmath_t<T>>;

// Loads `count` (<= lanes) elements of T as opmath lanes; lanes past count are 0.
template <class T>
inline OVec<T> load(const T* p, int64_t count) {
  using O = opmath_t<T>;
  constexpr int64_t W = OVec<T>::size();
  if constexpr (std::is_same_v<T, O>) {
    return OVec<T>::loadu(p, count);
  } else {
    if (count == W) {
      OVec<T> v;
      at::vec::load_to_float(p, v);
      return v;
    }
    O buf[W] = {};
    for (int64_t j = 0; j < count; ++j) buf[j] = static_cast<O>(p[j]);
    return OVec<T>::loadu(buf);
  }
}

template <class T>
inline void store(T* p, const OVec<T>& v, int64_t count) {
  using O = opmath_t<T>;
  constexpr int64_t W = OVec<T>::size();
  if constexpr (std::is_same_v<T, O>) {
    v.store(p, count);
  } else {
    O buf[W];
    v.store(buf);
    for (int64_t j = 0; j < count; ++j) p[j] = static_cast<T>(buf[j]);
  }
}

// Operand values for elements [i, i + count), as opmath lanes (`absent` when not given).
// Full operands and broadcast blocks that do not wrap inside the vector are loaded
// contiguously; the rest is gathered.
template <class O, class T>
inline at::vec::Vectorized<O> load_operand(const Operand<T>& o, int64_t i, int64_t count,
                                           O absent) {
  using V = at::vec::Vectorized<O>;
  switch (o.mode) {
    case OperandMode::kAbsent: return V(absent);
    case OperandMode::kScalar: return V(static_cast<O>(o.ptr[0]));
    case OperandMode::kFull:
      if constexpr (std::is_same_v<T, O> || std::is_same_v<opmath_t<T>, O>) {
        if constexpr (!std::is_same_v<T, uint8_t> && !std::is_same_v<T, bool>)
          return load(o.ptr + i, count);
      }
      break;
    case OperandMode::kBroadcast:
      if constexpr (!std::is_same_v<T, uint8_t> && !std::is_same_v<T, bool>) {
        if (o.inner == 1) {
          const int64_t j = i % o.mid;
          if (j + count <= o.mid) return load(o.ptr + j, count);
        }
      }
      break;
  }
  O buf[V::size()] = {};
  for (int64_t j = 0; j < count; ++j)
    buf[j] = static_cast<O>(o.ptr[math::operand_index(o, i + j)]);
  return V::loadu(buf);
}

// Running sum of loss vectors with a bounded error. Each lane adds kFlush vectors in opmath,
// then folds that short sum into a double. One float running sum per lane over a whole
// chunk (2048 values) drops small terms that sit beside large ones: RetinaNet's focal loss
// (~1e-6 per easy negative next to O(1) positives) came out 4e-6 low, 30 ulps.
template <class O>
struct LaneSum {
  using V = at::vec::Vectorized<O>;
  static constexpr int kFlush = 16;
  V acc = V(O(0));
  double total[V::size()] = {};
  int count = 0;

  void add(const V& v) {
    acc = acc + v;
    if (++count == kFlush) flush();
  }
  void flush() {
    O lanes[V::size()];
    acc.store(lanes);
    for (int j = 0; j < V::size(); ++j) total[j] += static_cast<double>(lanes[j]);
    acc = V(O(0));
    count = 0;
  }
  double sum() {  // lanes in a fixed order: deterministic
    flush();
    double s = 0;
    for (int j = 0; j < V::size(); ++j) s += total[j];
    return s;
  }
};

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace simd
}  // namespace detloss
