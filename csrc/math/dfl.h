// Distribution Focal Loss (GFL) and the distribution integral, per row of R bin logits z.
// The row reductions (max, sum) are the kernels' business; the per-element and per-row
// formulas are here, shared by CPU and CUDA.
//
//   y clamped to [0, R - 1 - 0.01] (ultralytics' convention), l = floor(y), r = l + 1,
//   wl = r - y, wr = y - l
//   loss   = -(wl·log softmax(z)_l + wr·log softmax(z)_r) = lse - (wl·z_l + wr·z_r)
//            (wl + wr = 1), lse = m + log(sum_i exp(z_i - m)), m = max_i z_i
//   dloss/dz_i = softmax(z)_i - wl·[i = l] - wr·[i = r]         (no gradient to y)
//   integral d = sum_i i·softmax(z)_i,   dd/dz_i = softmax(z)_i·(i - d)
// A NaN target gives a NaN loss and NaN gradients for its row (checking for it would need a
// host synchronisation); ±inf targets clamp like any other.
#pragma once

#include "common.h"

namespace detloss {
namespace math {

// The most bins a row may have (the CPU kernels keep a row in a stack buffer).
constexpr int32_t kDflMaxBins = 1024;

template <class S>
struct DflTarget {
  int32_t l;  // left bin; the right one is l + 1
  S wl, wr;
  bool nan;
};

inline namespace DETLOSS_CAPABILITY_NS {

template <class S>
DETLOSS_HD DflTarget<S> dfl_target(S y, int32_t bins) {
  DflTarget<S> t;
  t.nan = !(y == y);
  const S hi = S(double(bins - 1) - 0.01);  // as ultralytics: reg_max - 1 - 0.01, rounded once
  const S yc = t.nan ? S(0) : (y < S(0) ? S(0) : (y > hi ? hi : y));
  t.l = static_cast<int32_t>(yc);  // yc >= 0: truncation is floor
  t.wl = S(t.l + 1) - yc;
  t.wr = yc - S(t.l);
  return t;
}

// The bins' share of the loss' linear term: wl·z_l + wr·z_r, for bin i holding z.
template <class S>
DETLOSS_HD S dfl_pick(const DflTarget<S>& t, int32_t i, S z) {
  return i == t.l ? t.wl * z : (i == t.l + 1 ? t.wr * z : S(0));
}

// d(loss)/d(z_i) for bin i with probability p = exp(z_i - lse).
template <class S>
DETLOSS_HD S dfl_grad(const DflTarget<S>& t, int32_t i, S p) {
  return p - (i == t.l ? t.wl : S(0)) - (i == t.l + 1 ? t.wr : S(0));
}

template <class S>
DETLOSS_HD S nan_value() {
  return S(0) / S(0);  // quiet NaN, host and device
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
