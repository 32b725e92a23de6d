// The classification losses: sigmoid BCE, Focal, Quality Focal, VariFocal.
// Written once, as templates over the value type (see common.h); the CPU kernels (scalar
// and SIMD) and the CUDA kernels all call cls_element, so a CPU gradcheck exercises the
// arithmetic the GPU runs.
//
// Notation, per element: x logit, t target in [0, 1], p = sigmoid(x), q = 1 - p,
// pw the BCE pos_weight (1 when absent).
#pragma once

#include "common.h"

namespace detloss {
namespace math {

enum class ClsKind : int32_t { kBCE = 0, kFocal = 1, kQFL = 2, kVFL = 3 };

// Launch-wide constants, in opmath S (float for half/bf16/float, double for double).
template <class S>
struct ClsConfig {
  S alpha;       // focal/qfl: the alpha_t balance, disabled when use_alpha is false;
                 // vfl: the weight of negatives
  S gamma;       // the focusing exponent
  bool use_alpha;
  PowMode pow_mode;  // pow_mode_for(gamma)
  S smoothing = S(0);  // binary label smoothing s (apex, YOLOv5's smooth_BCE); 0: none
};

inline namespace DETLOSS_CAPABILITY_NS {

// Loss of one element (before the user's `weight`) and, when GRAD, its derivative d/dx.
// `pos` is VFL's positive mask (label, or t > 0); ignored by the other kinds.
//
// Label smoothing s (apex's contrib focal loss; YOLOv5's smooth_BCE): the BCE term takes
// the smoothed target ts = t·(1 - s) + s/2; the modulating factors (focal's (1 - p_t)^γ,
// QFL's |t - p|^γ, VFL's weight) and alpha_t take the unsmoothed t.
//
// Derivatives that autograd would evaluate as inf*0 = NaN are given their finite limits:
// focal at q_t = 0 and qfl at |t - p| = 0 contribute 0 from the modulating factor.
template <ClsKind K, bool GRAD, class V, class M, class S>
DETLOSS_HD void cls_element(V x, V t, V pw, M pos, const ClsConfig<S>& c, V& loss, V& grad) {
  const V zero(S(0)), one(S(1));
  V p, q, e;
  sigmoid_pair(x, p, q, e);
  const V omt = one - t;
  V tb = t, omtb = omt;  // the BCE term's target
  if (c.smoothing != S(0)) {
    tb = t * V(S(1) - c.smoothing) + V(c.smoothing / S(2));
    omtb = one - tb;
  }

  // BCE with logits (pos_weight pw), as a sum of two non-negative terms:
  //   ce = (1 - t)·softplus(x) + pw·t·softplus(-x),  softplus(±x) = max(±x, 0) + log1p(e^-|x|)
  // (= (1 - t)·x + (1 + (pw - 1)·t)·softplus(-x), torch's arrangement, without its
  // cancellation: that loses all digits of a small loss, e.g. x = -30, t = 0 in fp32).
  //   dce/dx = (1 - t)·p - pw·t·q   (= p - t when pw = 1; each term exact for t in {0, 1})
  const V l1p = dl_log1p_unit(e);  // e = exp(-|x|) in (0, 1]
  const V ce = omtb * (dl_max(x, zero) + l1p) + pw * tb * (dl_max(zero - x, zero) + l1p);
  V dce = zero;
  if constexpr (GRAD) dce = omtb * p - pw * tb * q;

  if constexpr (K == ClsKind::kBCE) {
    loss = ce;
    if constexpr (GRAD) grad = dce;
    return;
  }

  if constexpr (K == ClsKind::kVFL) {
    // VarifocalNet: w = t on positives, alpha·p^gamma on negatives; loss = ce·w.
    // The gradient flows through w (ultralytics, mmdet): dw/dx = alpha·gamma·p^gamma·q on
    // negatives (gamma·p^(gamma-1)·p·q, with no singularity at p = 0), 0 on positives.
    const V alpha(c.alpha);
    const V pg = pow_gamma(p, c.gamma, c.pow_mode);
    const V w = dl_where(pos, t, alpha * pg);
    loss = ce * w;
    if constexpr (GRAD) {
      const V dw = dl_where(pos, zero, alpha * V(c.gamma) * pg * q);
      grad = dce * w + ce * dw;
    }
    return;
  }

  // Focal and QFL share: loss = ce · alpha_t · m(x), alpha_t = t·alpha + (1 - t)·(1 - alpha).
  V alpha_t = one;
  if (c.use_alpha) {
    const V alpha(c.alpha);
    alpha_t = t * alpha + omt * (one - alpha);
  }
  V m, dm = zero;
  if constexpr (K == ClsKind::kFocal) {
    // RetinaNet: m = (1 - p_t)^gamma, 1 - p_t = t·q + (1 - t)·p;  d(1 - p_t)/dx = (1 - 2t)·p·q
    //   dm/dx = gamma·(1 - p_t)^(gamma - 1)·(1 - 2t)·p·q = gamma·m·(1 - 2t)·r,  r = p·q / (1 - p_t).
    // r is in [0, 1] (1 - p_t is a convex combination of p and q, so >= min(p, q)): unlike
    // (1 - p_t)^(gamma - 1) it cannot overflow when p underflows (x = -100, gamma < 1).
    // Where 1 - p_t = 0 the limit (gamma > 0) is 0.
    const V qt = t * q + omt * p;
    m = pow_gamma(qt, c.gamma, c.pow_mode);
    if constexpr (GRAD) {
      const V r = dl_where(qt > zero, (p * q) / qt, zero);
      dm = V(c.gamma) * m * (one - t - t) * r;
    }
  } else {  // kQFL
    // GFL: m = |t - p|^gamma; d = p - t, formed as (1 - t) - q when t >= 1/2 (1 - t is exact
    // there) so that d keeps its accuracy as p -> 1.
    //   dm/dx = gamma·|d|^(gamma - 1)·sign(d)·p·q = gamma·m·(p·q / d), taken as 0 where d = 0.
    // p·q / d first: it stays bounded for hard targets (q for t = 0, -p for t = 1) even when
    // d underflows with p.
    const V d = dl_where(t >= V(S(0.5)), omt - q, p - t);
    m = pow_gamma(dl_abs(d), c.gamma, c.pow_mode);
    if constexpr (GRAD) dm = V(c.gamma) * m * dl_where(d != zero, (p * q) / d, zero);
  }
  loss = ce * alpha_t * m;
  if constexpr (GRAD) grad = alpha_t * (dce * m + ce * dm);
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
