// Distribution Focal Loss (GFL), the distribution integral and the distillation KL (D-FINE's
// DDF), per row of R bin logits z.
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

// D-FINE's FGL (unimodal_distribution_focal_loss): its bins are not uniform, so the caller
// gives the left bin and the right bin's weight:
//   l = trunc(y) (y >= 0: floor), r = l + 1, wr as given, wl = 1 - wr; no clamp
// (loss = wl·CE(z, l) + wr·CE(z, r), as the library's two cross-entropies). A left bin outside
// [0, R - 2], or a NaN, gives a NaN row as a NaN target does.
template <class S>
DETLOSS_HD DflTarget<S> dfl_target_split(S y, S wr, int32_t bins) {
  DflTarget<S> t;
  t.nan = !(y >= S(0) && y < S(bins - 1));  // (a NaN weight makes a NaN row by itself)
  t.l = t.nan ? 0 : static_cast<int32_t>(y);
  t.wr = wr;
  t.wl = S(1) - wr;
  return t;
}

// Row r's target: [rows] distances, or (split) [rows, 2] (left bin, right bin's weight).
template <class S>
DETLOSS_HD DflTarget<S> dfl_target_at(const S* target, bool split, int64_t r, int32_t bins) {
  return split ? dfl_target_split(target[2 * r], target[2 * r + 1], bins)
               : dfl_target(target[r], bins);
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

// ---- The distillation KL of two distributions over the bins (D-FINE's DDF, LD): pred
// logits z against a teacher's logits u (no gradient to u), at temperature T:
//   q = softmax(u / T), log p = log_softmax(z / T)
//   loss = T²·Σ_i q_i·(log q_i - log p_i)            (torch's kl_div; 0 where q_i = 0)
//        = T²·(Σ_i q_i·(u_i/T - z_i/T) + lse_z - lse_u)   (Σ q = 1)
//   dloss/dz_i = T·(p_i - q_i)                        (log_softmax's backward of -T²·q)
// Per row (lse of z/T, lse of u/T) are kept for the backward. The exponentials are in the
// row's arithmetic, their sums and the KL's two terms in double: a student close to its
// teacher (the point of distillation) makes the KL a small difference of terms ~log R, which
// float32 sums would leave with a few ulp of those terms (torch's own chain has them).
template <class S>
struct DflKlRow {
  S loss, lse_z, lse_u;
};

template <class S, class T>
DETLOSS_HD DflKlRow<S> dfl_kl_row(const T* z, const T* u, int32_t bins, S temp) {
  using A = double;
  const S inv = S(1) / temp;
  S mz = static_cast<S>(z[0]) * inv, mu = static_cast<S>(u[0]) * inv;
  for (int32_t i = 1; i < bins; ++i) {
    mz = dl_max(mz, static_cast<S>(z[i]) * inv);
    mu = dl_max(mu, static_cast<S>(u[i]) * inv);
  }
  // the exponentials in the row's arithmetic, their sums and the KL's terms in double
  A sz(0), su(0), acc(0);
  for (int32_t i = 0; i < bins; ++i) {
    const S zt = static_cast<S>(z[i]) * inv, ut = static_cast<S>(u[i]) * inv;
    const S eu = dl_exp(ut - mu);
    sz = sz + static_cast<A>(dl_exp(zt - mz));
    su = su + static_cast<A>(eu);
    acc = acc + static_cast<A>(eu) * (static_cast<A>(ut) - static_cast<A>(zt));
  }
  // Σ q·(u/T - z/T) + lse_z - lse_u (Σ q = 1), lse = m + log(s)
  const A kl = acc / su + (static_cast<A>(mz) - static_cast<A>(mu)) + dl_log(sz / su);
  return {static_cast<S>(static_cast<A>(temp) * static_cast<A>(temp) * kl),
          static_cast<S>(static_cast<A>(mz) + dl_log(sz)), static_cast<S>(static_cast<A>(mu) + dl_log(su))};
}

// gz_i = g·T·(p_i·Σ q - q_i) for the row, from its (lse_z, lse_u): Σ q = 1 up to rounding.
template <class S, class T>
DETLOSS_HD void dfl_kl_row_grad(const T* z, const T* u, int32_t bins, S temp, S lse_z, S lse_u,
                                S g, T* gz) {
  const S inv = S(1) / temp, gt = g * temp;
  for (int32_t i = 0; i < bins; ++i) {
    const S p = dl_exp(static_cast<S>(z[i]) * inv - lse_z);
    const S q = dl_exp(static_cast<S>(u[i]) * inv - lse_u);
    gz[i] = static_cast<T>(gt * (p - q));
  }
}

template <class S>
DETLOSS_HD S nan_value() {
  return S(0) / S(0);  // quiet NaN, host and device
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
