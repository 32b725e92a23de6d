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
//        = T²·(Σ_i q_i·(u_i/T - z_i/T) + (lse_z - lse_u)·Σ_i q_i)
//   dloss/dz_i = T·(p_i·Σ_j q_j - q_i)                (log_softmax's backward of -T²·q)
// Per row (lse of z/T, lse of u/T) are kept for the backward. The row is computed in double
// whatever the dtype: a student close to its teacher (the point of distillation) makes the
// KL a small difference of terms ~log R, which float32 would leave with a few ulp of those
// terms (worse than torch's own float32 chain); the cost is R-term sums in double.
template <class S>
struct DflKlRow {
  S loss, lse_z, lse_u;
};

template <class S, class T>
DETLOSS_HD DflKlRow<S> dfl_kl_row(const T* z, const T* u, int32_t bins, S temp_s) {
  using A = double;
  const A temp = static_cast<A>(temp_s), inv = A(1) / temp;  // (x·(1/T): one division a row)
  A mz = static_cast<A>(static_cast<S>(z[0])) * inv, mu = static_cast<A>(static_cast<S>(u[0])) * inv;
  for (int32_t i = 1; i < bins; ++i) {
    mz = dl_max(mz, static_cast<A>(static_cast<S>(z[i])) * inv);
    mu = dl_max(mu, static_cast<A>(static_cast<S>(u[i])) * inv);
  }
  A sz(0), su(0);
  for (int32_t i = 0; i < bins; ++i) {
    sz = sz + dl_exp(static_cast<A>(static_cast<S>(z[i])) * inv - mz);
    su = su + dl_exp(static_cast<A>(static_cast<S>(u[i])) * inv - mu);
  }
  const A lse_z = mz + dl_log(sz), lse_u = mu + dl_log(su);
  A acc(0), sq(0);
  for (int32_t i = 0; i < bins; ++i) {
    const A ut = static_cast<A>(static_cast<S>(u[i])) * inv, q = dl_exp(ut - lse_u);
    if (q > A(0)) {
      acc = acc + q * (ut - static_cast<A>(static_cast<S>(z[i])) * inv);
      sq = sq + q;
    }
  }
  return {static_cast<S>(temp * temp * (acc + (lse_z - lse_u) * sq)), static_cast<S>(lse_z),
          static_cast<S>(lse_u)};
}

// gz_i = g·T·(p_i·Σ q - q_i) for the row, from its (lse_z, lse_u) (in double, as the loss).
template <class S, class T>
DETLOSS_HD void dfl_kl_row_grad(const T* z, const T* u, int32_t bins, S temp_s, S lse_z_s,
                                S lse_u_s, S g, T* gz) {
  using A = double;
  const A temp = static_cast<A>(temp_s), inv = A(1) / temp, lse_z = static_cast<A>(lse_z_s),
          lse_u = static_cast<A>(lse_u_s);
  A sq(0);
  for (int32_t i = 0; i < bins; ++i) sq = sq + dl_exp(static_cast<A>(static_cast<S>(u[i])) * inv - lse_u);
  const A gt = static_cast<A>(g) * temp;
  for (int32_t i = 0; i < bins; ++i) {
    const A p = dl_exp(static_cast<A>(static_cast<S>(z[i])) * inv - lse_z);
    const A q = dl_exp(static_cast<A>(static_cast<S>(u[i])) * inv - lse_u);
    gz[i] = static_cast<T>(static_cast<S>(gt * (p * sq - q)));
  }
}

template <class S>
DETLOSS_HD S nan_value() {
  return S(0) / S(0);  // quiet NaN, host and device
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
