// Shared host/device helpers for the formulas in csrc/math/.
//
// No torch includes here: this header is compiled by nvcc for the CUDA kernels, by the
// host compiler for the scalar CPU paths, and once per CPU capability (DEFAULT, AVX2,
// AVX512) for the vectorised CPU loops. The formulas are templates over a value type V:
// float or double (CUDA and CPU tails) or at::vec::Vectorized<float|double> (CPU SIMD,
// whose overloads of the dl_* shims live in csrc/cpu/vec_ops.h). They use selects, not
// branches, so one text serves scalars and SIMD lanes.
#pragma once

#include <cmath>
#include <cstdint>

#include "config.h"

namespace detloss {
namespace math {
inline namespace DETLOSS_CAPABILITY_NS {

// ---- scalar shims (float / double); Vectorized overloads are in csrc/cpu/vec_ops.h ----
DETLOSS_HD float dl_exp(float x) { return ::expf(x); }
DETLOSS_HD double dl_exp(double x) { return ::exp(x); }
DETLOSS_HD float dl_expm1(float x) { return ::expm1f(x); }
DETLOSS_HD double dl_expm1(double x) { return ::expm1(x); }
DETLOSS_HD float dl_log(float x) { return ::logf(x); }
DETLOSS_HD double dl_log(double x) { return ::log(x); }
// log1p(x) for x in [0, 1]; the SIMD overload exploits the range (csrc/cpu/vec_ops.h)
DETLOSS_HD float dl_log1p_unit(float x) { return ::log1pf(x); }
DETLOSS_HD double dl_log1p_unit(double x) { return ::log1p(x); }
DETLOSS_HD float dl_abs(float x) { return ::fabsf(x); }
DETLOSS_HD double dl_abs(double x) { return ::fabs(x); }
DETLOSS_HD float dl_pow(float x, float y) { return ::powf(x, y); }
DETLOSS_HD double dl_pow(double x, double y) { return ::pow(x, y); }
DETLOSS_HD float dl_atan(float x) { return ::atanf(x); }
DETLOSS_HD double dl_atan(double x) { return ::atan(x); }
DETLOSS_HD float dl_cos(float x) { return ::cosf(x); }
DETLOSS_HD double dl_cos(double x) { return ::cos(x); }
DETLOSS_HD float dl_sin(float x) { return ::sinf(x); }
DETLOSS_HD double dl_sin(double x) { return ::sin(x); }
DETLOSS_HD float dl_sqrt(float x) { return ::sqrtf(x); }
DETLOSS_HD double dl_sqrt(double x) { return ::sqrt(x); }
DETLOSS_HD float dl_ceil(float x) { return ::ceilf(x); }
DETLOSS_HD double dl_ceil(double x) { return ::ceil(x); }
// sin and cos of x together, for kernels that must not carry libm's slow-path range
// reduction (Payne-Hanek keeps a 7-word array on the stack: a CUDA stack frame): the
// reduction by pi/2 in three parts and fdlibm's kernel polynomials, in double (float: then
// rounded once, so within an ulp of sinf/cosf). The three-part reduction is exact in its
// first product for |x| < 2^20·pi/2 (1.6e6 rad; a float angle there has an ulp of 0.125
// rad); beyond, digits go. NaN and ±inf give NaN, as sin/cos.
DETLOSS_HD void dl_sincos_d(double x, double& s, double& c) {
  const double k = ::rint(x * 6.36619772367581382433e-01);  // x·2/pi
  const double y = ((x - k * 1.57079632673412561417e+00) - k * 6.07710050630396597660e-11) -
                   k * 2.02226624879595063154e-21;
  const double z = y * y;
  const double sp = y + y * z * (-1.66666666666666324348e-01 +
                    z * (8.33333333332248946124e-03 + z * (-1.98412698298579493134e-04 +
                    z * (2.75573137070700676789e-06 + z * (-2.50507602534068634195e-08 +
                    z * 1.58969099521155010221e-10)))));
  const double cp = 1.0 - 0.5 * z + z * z * (4.16666666666666019037e-02 +
                    z * (-1.38888888888741095749e-03 + z * (2.48015872894767294178e-05 +
                    z * (-2.75573143513906633035e-07 + z * (2.08757232129817482790e-09 +
                    z * -1.13596475577881948265e-11)))));
  // the quadrant (k mod 4); a NaN or huge k has none (y is NaN or meaningless there)
  const int q = ::fabs(k) < 4503599627370496.0 ? static_cast<int>(static_cast<int64_t>(k) & 3) : 0;
  s = q == 0 ? sp : q == 1 ? cp : q == 2 ? -sp : -cp;
  c = q == 0 ? cp : q == 1 ? -sp : q == 2 ? -cp : sp;
}
DETLOSS_HD void dl_sincos(double x, double& s, double& c) { dl_sincos_d(x, s, c); }
DETLOSS_HD void dl_sincos(float x, float& s, float& c) {
  double sd, cd;
  dl_sincos_d(static_cast<double>(x), sd, cd);
  s = static_cast<float>(sd);
  c = static_cast<float>(cd);
}

// max/min that propagate NaN (as at::vec::maximum/minimum and torch.maximum do).
DETLOSS_HD float dl_max(float a, float b) { return (a != a || a > b) ? a : b; }
DETLOSS_HD double dl_max(double a, double b) { return (a != a || a > b) ? a : b; }
DETLOSS_HD float dl_min(float a, float b) { return (a != a || a < b) ? a : b; }
DETLOSS_HD double dl_min(double a, double b) { return (a != a || a < b) ? a : b; }
DETLOSS_HD float dl_where(bool c, float a, float b) { return c ? a : b; }
DETLOSS_HD double dl_where(bool c, double a, double b) { return c ? a : b; }

// base^gamma for the exponents detectors use. gamma = 0, 1, 2 are exact and cheap; any
// other exponent goes through pow. The mode is chosen once per launch on the host.
enum class PowMode : int32_t { kZero = 0, kOne = 1, kTwo = 2, kGeneral = 3 };

inline PowMode pow_mode_for(double gamma) {
  if (gamma == 0.0) return PowMode::kZero;
  if (gamma == 1.0) return PowMode::kOne;
  if (gamma == 2.0) return PowMode::kTwo;
  return PowMode::kGeneral;
}

template <class V, class S>
DETLOSS_HD V pow_gamma(V base, S gamma, PowMode mode) {
  switch (mode) {
    case PowMode::kZero: return V(S(1));  // pow(x, 0) == 1, including x == 0
    case PowMode::kOne: return base;
    case PowMode::kTwo: return base * base;
    default: return dl_pow(base, V(gamma));
  }
}

// Numerically stable sigmoid pair: p = sigmoid(x) and q = 1 - sigmoid(x), each computed
// directly (never 1 - p), so both keep full relative accuracy in the tails. e = exp(-|x|)
// is returned too: the loss needs log1p(e).
template <class V>
DETLOSS_HD void sigmoid_pair(V x, V& p, V& q, V& e) {
  const V one(1);
  e = dl_exp(V(0) - dl_abs(x));
  const V r = one / (one + e);  // sigmoid(|x|)
  const V s = e * r;            // sigmoid(-|x|)
  const auto nonneg = x >= V(0);
  p = dl_where(nonneg, r, s);
  q = dl_where(nonneg, s, r);
}

// The pixel indices i in [0, n) with a <= i < b, as [lo, hi): ultralytics' crop_mask (the mask
// loss, the mask-aware assigner); its test on integer indices is i >= ceil(a) and i < ceil(b).
// A NaN edge selects nothing (the comparisons are false), infinite ones clamp.
template <class S>
DETLOSS_HD void mask_span(S a, S b, int64_t n, int64_t& lo, int64_t& hi) {
  S l = dl_ceil(a), h = dl_ceil(b);
  if (!(l == l) || !(h == h)) {
    lo = hi = 0;
    return;
  }
  const S top = static_cast<S>(n);
  l = l < S(0) ? S(0) : (l > top ? top : l);
  h = h < S(0) ? S(0) : (h > top ? top : h);
  lo = static_cast<int64_t>(l);
  hi = static_cast<int64_t>(h);
  if (hi < lo) hi = lo;
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
