// The IoU family of box losses: IoU, GIoU, DIoU, CIoU, ProbIoU (rotated boxes), and the
// pairwise metric.
// Written once, as templates over the value type (see common.h); CPU (scalar and SIMD) and
// CUDA kernels call box_element, so a CPU gradcheck exercises what the GPU runs.
//
// Boxes a (pred) and b (target) as corners (x1, y1, x2, y2); w = x2 - x1, h = y2 - y1.
//   inter = max(min(x2a,x2b) - max(x1a,x1b), 0) · max(min(y2a,y2b) - max(y1a,y1b), 0)
//   union = wa·ha + wb·hb - inter + eps,  IoU = inter / union
//   cw = max(x2a,x2b) - min(x1a,x1b), ch likewise (the enclosing box)
//   GIoU = IoU - (C - union) / C,  C = cw·ch + eps
//   DIoU = IoU - rho2 / c2,  c2 = cw^2 + ch^2 + eps,
//          rho2 = ((x1b + x2b - x1a - x2a)^2 + (y1b + y2b - y1a - y2a)^2) / 4
//   CIoU = DIoU - alpha·v,  v = (4/pi^2)·(atan(wb/(hb + eps)) - atan(wa/(ha + eps)))^2,
//          alpha = v / (v - IoU + 1 + eps), a constant for the gradient (ultralytics,
//          torchvision, mmdet)
//   loss = 1 - metric (the callers' business: box_element returns the metric)
// Gradients follow autograd of that formula exactly: ties in min/max split the gradient
// equally (torch.minimum/maximum), the clamp at 0 passes it only where the overlap is > 0
// (touching boxes get no gradient through the intersection; Tensor.clamp(min=0) agrees in
// torch 2.14, while 2.11's passed it at exactly 0). Two
// documented departures: CIoU's aspect term gives no gradient to a point box (w = h = 0),
// where the formula's 1/eps would overflow (see atan_ratio_dw), and GIoU's penalty none
// where the enclosing box has zero area (its derivative is 1/eps there too).
#pragma once

#include <type_traits>

#include "common.h"

namespace detloss {
namespace math {

enum class BoxKind : int32_t {
  kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3,  // boxes xyxy or xywh: rows of 4
  kProbIoU = 4, kProbCIoU = 5                 // rotated boxes xywhr: rows of 5
};

DETLOSS_HD constexpr bool is_rotated(BoxKind k) {
  return k == BoxKind::kProbIoU || k == BoxKind::kProbCIoU;
}
DETLOSS_HD constexpr int box_row(BoxKind k) { return is_rotated(k) ? 5 : 4; }

// The one switch from a run-time kind to the code compiled for it (host code): calls
// f(std::integral_constant<BoxKind, K>()).
template <class F>
inline decltype(auto) with_box_kind(BoxKind kind, F&& f) {
  switch (kind) {
    case BoxKind::kGIoU: return f(std::integral_constant<BoxKind, BoxKind::kGIoU>());
    case BoxKind::kDIoU: return f(std::integral_constant<BoxKind, BoxKind::kDIoU>());
    case BoxKind::kCIoU: return f(std::integral_constant<BoxKind, BoxKind::kCIoU>());
    case BoxKind::kProbIoU: return f(std::integral_constant<BoxKind, BoxKind::kProbIoU>());
    case BoxKind::kProbCIoU: return f(std::integral_constant<BoxKind, BoxKind::kProbCIoU>());
    default: return f(std::integral_constant<BoxKind, BoxKind::kIoU>());
  }
}

template <class V>
struct Box {
  V x1, y1, x2, y2;
};

template <class V>
struct RBox {  // centre, size, angle (radians)
  V x, y, w, h, r;
};

inline namespace DETLOSS_CAPABILITY_NS {

// (x1, y1, x2, y2) from (cx, cy, w, h), and the chain rule back.
template <class V>
DETLOSS_HD Box<V> xywh_to_xyxy(const Box<V>& c) {
  const V half(0.5);
  const V hw = c.x2 * half, hh = c.y2 * half;  // c = (cx, cy, w, h) in (x1, y1, x2, y2) slots
  return {c.x1 - hw, c.y1 - hh, c.x1 + hw, c.y1 + hh};
}
template <class V>
DETLOSS_HD Box<V> xyxy_grad_to_xywh(const Box<V>& g) {
  const V half(0.5);
  return {g.x1 + g.x2, g.y1 + g.y2, (g.x2 - g.x1) * half, (g.y2 - g.y1) * half};
}

// d min(a, b) / da as autograd takes it: 1 where a < b, 1/2 at a tie, 0 otherwise
// (d/db is 1 minus it). For max swap the arguments.
template <class V>
DETLOSS_HD V min_share(V a, V b) {
  const V zero(0), half(0.5), one(1);
  return dl_where(a < b, one, dl_where(a == b, half, zero));
}

// d atan(w / (h + eps)) / dw (d/dh is -w / (h + eps) times it). For a point box (w = h = 0)
// the aspect ratio has no direction and this would be 1/eps (1e7: inf in fp16): it is taken
// as 0 there.
template <class V>
DETLOSS_HD V atan_ratio_dw(V w, V h, V hpe) {
  const V zero(0);
  return dl_where(w * w + h * h > zero, hpe / (hpe * hpe + w * w), zero);
}

// The metric of one pair (xyxy) and, when GRAD, gm·d(metric)/d(a) and gm·d(metric)/d(b)
// (a loss 1 - metric passes gm = -g).
template <BoxKind K, bool GRAD, class V, class S>
DETLOSS_HD V box_element(const Box<V>& a, const Box<V>& b, S eps_s, V gm, Box<V>& ga,
                         Box<V>& gb) {
  const V zero(0), one(1), half(0.5), eps(eps_s);
  const V wa = a.x2 - a.x1, ha = a.y2 - a.y1, wb = b.x2 - b.x1, hb = b.y2 - b.y1;
  const V iw_raw = dl_min(a.x2, b.x2) - dl_max(a.x1, b.x1);
  const V ih_raw = dl_min(a.y2, b.y2) - dl_max(a.y1, b.y1);
  const V iw = dl_max(iw_raw, zero), ih = dl_max(ih_raw, zero);
  const V inter = iw * ih;
  const V uni = wa * ha + wb * hb - inter + eps;
  const V iou = inter / uni;
  V metric = iou;

  V cw = zero, ch = zero, C = one, c2 = one, rho2 = zero, dx = zero, dy = zero;
  V v = zero, alpha = zero, ta_dw = zero, tb_dw = zero, dv = zero;
  const V hpa = ha + eps, hpb = hb + eps;
  if constexpr (K != BoxKind::kIoU) {
    cw = dl_max(a.x2, b.x2) - dl_min(a.x1, b.x1);
    ch = dl_max(a.y2, b.y2) - dl_min(a.y1, b.y1);
  }
  if constexpr (K == BoxKind::kGIoU) {
    C = cw * ch + eps;
    metric = iou - (C - uni) / C;
  }
  if constexpr (K == BoxKind::kDIoU || K == BoxKind::kCIoU) {
    c2 = cw * cw + ch * ch + eps;
    dx = b.x1 + b.x2 - a.x1 - a.x2;
    dy = b.y1 + b.y2 - a.y1 - a.y2;
    rho2 = (dx * dx + dy * dy) * V(0.25);
    metric = iou - rho2 / c2;
  }
  if constexpr (K == BoxKind::kCIoU) {
    const V k(0.40528473456935108578);  // 4 / pi^2
    dv = dl_atan(wb / hpb) - dl_atan(wa / hpa);
    v = k * dv * dv;
    alpha = v / (v - iou + one + eps);
    metric = metric - alpha * v;
  }
  if constexpr (!GRAD) {
    return metric;
  } else {
    // reverse mode, by hand, from gm = the gradient of the metric
    V g_inter = gm / uni;
    V g_uni = zero - gm * inter / (uni * uni);
    V g_cw = zero, g_ch = zero;
    V g_wa = zero, g_ha = zero, g_wb = zero, g_hb = zero;
    ga = {zero, zero, zero, zero};
    gb = {zero, zero, zero, zero};
    if constexpr (K == BoxKind::kGIoU) {  // metric = iou - 1 + union / C
      // a zero-area enclosing box (both boxes degenerate along one axis): the penalty is 0
      // there and its derivative 1/eps (1e7: inf in fp16); taken as 0, as for CIoU's point box
      const auto live = cw * ch > zero;
      g_uni = g_uni + dl_where(live, gm / C, zero);
      const V g_C = dl_where(live, zero - gm * uni / (C * C), zero);
      g_cw = g_C * ch;
      g_ch = g_C * cw;
    }
    if constexpr (K == BoxKind::kDIoU || K == BoxKind::kCIoU) {  // metric -= rho2 / c2
      const V g_rho2 = zero - gm / c2;
      const V g_c2 = gm * rho2 / (c2 * c2);
      g_cw = V(2) * cw * g_c2;
      g_ch = V(2) * ch * g_c2;
      const V g_dx = g_rho2 * dx * half, g_dy = g_rho2 * dy * half;
      ga.x1 = ga.x1 - g_dx; ga.x2 = ga.x2 - g_dx; gb.x1 = gb.x1 + g_dx; gb.x2 = gb.x2 + g_dx;
      ga.y1 = ga.y1 - g_dy; ga.y2 = ga.y2 - g_dy; gb.y1 = gb.y1 + g_dy; gb.y2 = gb.y2 + g_dy;
    }
    if constexpr (K == BoxKind::kCIoU) {  // metric -= alpha·v, alpha constant
      const V g_dv = zero - gm * alpha * V(2 * 0.40528473456935108578) * dv;
      const V da = atan_ratio_dw(wa, ha, hpa), db = atan_ratio_dw(wb, hb, hpb);
      g_wb = g_wb + g_dv * db;
      g_hb = g_hb - g_dv * db * wb / hpb;
      g_wa = g_wa - g_dv * da;
      g_ha = g_ha + g_dv * da * wa / hpa;
    }
    // union = wa·ha + wb·hb - inter + eps
    g_inter = g_inter - g_uni;
    g_wa = g_wa + g_uni * ha;
    g_ha = g_ha + g_uni * wa;
    g_wb = g_wb + g_uni * hb;
    g_hb = g_hb + g_uni * wb;
    // inter = clamp(iw_raw, 0)·clamp(ih_raw, 0); iw_raw = min(x2a, x2b) - max(x1a, x1b)
    const V g_iw = dl_where(iw_raw > zero, g_inter * ih, zero);
    const V g_ih = dl_where(ih_raw > zero, g_inter * iw, zero);
    V s = min_share(a.x2, b.x2);
    ga.x2 = ga.x2 + g_iw * s; gb.x2 = gb.x2 + g_iw * (one - s);
    s = min_share(b.x1, a.x1);  // max(x1a, x1b): a's share is min_share(b, a)
    ga.x1 = ga.x1 - g_iw * s; gb.x1 = gb.x1 - g_iw * (one - s);
    s = min_share(a.y2, b.y2);
    ga.y2 = ga.y2 + g_ih * s; gb.y2 = gb.y2 + g_ih * (one - s);
    s = min_share(b.y1, a.y1);
    ga.y1 = ga.y1 - g_ih * s; gb.y1 = gb.y1 - g_ih * (one - s);
    if constexpr (K != BoxKind::kIoU) {
      // cw = max(x2a, x2b) - min(x1a, x1b)
      s = min_share(b.x2, a.x2);
      ga.x2 = ga.x2 + g_cw * s; gb.x2 = gb.x2 + g_cw * (one - s);
      s = min_share(a.x1, b.x1);
      ga.x1 = ga.x1 - g_cw * s; gb.x1 = gb.x1 - g_cw * (one - s);
      s = min_share(b.y2, a.y2);
      ga.y2 = ga.y2 + g_ch * s; gb.y2 = gb.y2 + g_ch * (one - s);
      s = min_share(a.y1, b.y1);
      ga.y1 = ga.y1 - g_ch * s; gb.y1 = gb.y1 - g_ch * (one - s);
    }
    // w = x2 - x1, h = y2 - y1
    ga.x2 = ga.x2 + g_wa; ga.x1 = ga.x1 - g_wa; ga.y2 = ga.y2 + g_ha; ga.y1 = ga.y1 - g_ha;
    gb.x2 = gb.x2 + g_wb; gb.x1 = gb.x1 - g_wb; gb.y2 = gb.y2 + g_hb; gb.y1 = gb.y1 - g_hb;
    return metric;
  }
}

// ---------------------------------------------------------------------------- ProbIoU
// ultralytics' probiou(obb1, obb2, CIoU, eps, floor) (arXiv 2106.06072), p = obb1 (pred),
// q = obb2 (target), xywhr. Each box is a Gaussian of covariance [[a, c], [c, b]]:
//   A = w²/12 + floor, B = h²/12 + floor,
//   a = A·cos²r + B·sin²r,  b = A·sin²r + B·cos²r,  c = (A - B)·cos r·sin r
// With SA = a1 + a2, SB = b1 + b2, SC = c1 + c2, det = SA·SB - SC², den = det + eps:
//   t1 = (SA·(y1 - y2)² + SB·(x1 - x2)²) / den / 4
//   t2 = SC·(x2 - x1)·(y1 - y2) / den / 2
//   t3 = log(det / (4·sqrt(max(a1b1 - c1², 0)·max(a2b2 - c2², 0)) + eps) + eps) / 2
//   bd = clamp(t1 + t2 + t3, eps, 100),  hd = sqrt(1 - exp(-bd) + eps),  ProbIoU = 1 - hd
//   CIoU: - alpha·v, v = (4/pi²)·(atan(w2/h2) - atan(w1/h1))², alpha = v / (v - ProbIoU + 1 + eps)
//   a constant for the gradient (computed under no_grad there)
// 1 - exp(-bd) is formed as -expm1(-bd): bd is often near eps, where 1 - exp(-bd) loses
// every digit (ultralytics' float32 error there is ~1e-5; this one's, ~1e-7).
// Gradients follow autograd of the formula: the clamps pass none at or beyond their bounds
// (torch >= 2.14's rule), and where a box's covariance is singular (w = h = 0 without a
// floor) sqrt's derivative at 0 is taken as 0 (autograd: inf·0 = NaN).
template <class V>
struct RCov {
  V A, B, co, si, a, b, c;
};

template <class V, class S>
DETLOSS_HD RCov<V> probiou_cov(const RBox<V>& o, S floor_s) {
  RCov<V> k;
  k.A = o.w * o.w / V(S(12)) + V(floor_s);
  k.B = o.h * o.h / V(S(12)) + V(floor_s);
  dl_sincos(o.r, k.si, k.co);
  const V c2 = k.co * k.co, s2 = k.si * k.si;
  k.a = k.A * c2 + k.B * s2;
  k.b = k.A * s2 + k.B * c2;
  k.c = (k.A - k.B) * k.co * k.si;
  return k;
}

// (ga, gb, gc) = the gradients of a, b, c -> added to g's w, h, r
template <class V>
DETLOSS_HD void probiou_cov_grad(const RBox<V>& o, const RCov<V>& k, V ga, V gb, V gc,
                                 RBox<V>& g) {
  const V two(2), six(6);
  const V c2 = k.co * k.co, s2 = k.si * k.si, cs = k.co * k.si, d = k.A - k.B;
  const V gA = ga * c2 + gb * s2 + gc * cs;
  const V gB = ga * s2 + gb * c2 - gc * cs;
  const V gco = two * k.co * (ga * k.A + gb * k.B) + gc * d * k.si;
  const V gsi = two * k.si * (ga * k.B + gb * k.A) + gc * d * k.co;
  g.w = g.w + gA * o.w / six;
  g.h = g.h + gB * o.h / six;
  g.r = g.r + k.co * gsi - k.si * gco;
}

// The metric of one pair and, when GRAD, gm·d(metric)/d(p) and gm·d(metric)/d(q).
template <bool CIOU, bool GRAD, class V, class S>
DETLOSS_HD V probiou_element(const RBox<V>& p, const RBox<V>& q, S eps_s, S floor_s, V gm,
                             RBox<V>& gp, RBox<V>& gq) {
  const V zero(0), one(1), two(2), half(0.5), quarter(0.25), eps(eps_s), hundred(100);
  const RCov<V> k1 = probiou_cov(p, floor_s), k2 = probiou_cov(q, floor_s);
  const V SA = k1.a + k2.a, SB = k1.b + k2.b, SC = k1.c + k2.c;
  const V dx = p.x - q.x, dy = p.y - q.y, ex = q.x - p.x;
  const V det = SA * SB - SC * SC;
  const V den = det + eps;
  const V n1 = SA * (dy * dy) + SB * (dx * dx), n2 = SC * ex * dy;
  const V t1 = n1 / den * quarter, t2 = n2 / den * half;
  const V d1r = k1.a * k1.b - k1.c * k1.c, d2r = k2.a * k2.b - k2.c * k2.c;
  const V d1 = dl_max(d1r, zero), d2 = dl_max(d2r, zero);
  const V P = d1 * d2, sq = dl_sqrt(P);
  const V qd = V(S(4)) * sq + eps;
  const V u = det / qd + eps;
  const V bdr = t1 + t2 + dl_log(u) * half;
  const V bd = dl_min(dl_max(bdr, eps), hundred);
  const V em = zero - dl_expm1(zero - bd);  // 1 - exp(-bd)
  const V hd = dl_sqrt(em + eps);
  const V iou = one - hd;
  V metric = iou, alpha = zero, dv = zero, xp = zero, xq = zero;
  constexpr double kAspect = 0.40528473456935108578;  // 4 / pi^2
  if constexpr (CIOU) {
    xp = p.w / p.h;
    xq = q.w / q.h;
    dv = dl_atan(xq) - dl_atan(xp);
    const V v = V(S(kAspect)) * dv * dv;
    alpha = v / (v - iou + (one + eps));
    metric = iou - v * alpha;
  }
  if constexpr (GRAD) {
    gp = {zero, zero, zero, zero, zero};
    gq = {zero, zero, zero, zero, zero};
    // CIoU's term last, from one value kept (fewer live registers on a GPU)
    const V g_dv = CIOU ? (zero - gm * alpha) * V(S(2 * kAspect)) * dv : zero;
    // ProbIoU = 1 - sqrt(1 - exp(-bd) + eps); the clamp passes eps < bd < 100 only
    const V g_bd = (zero - gm) * dl_exp(zero - bd) / (two * hd);
    const V g = dl_where(bdr > eps, dl_where(bdr < hundred, g_bd, zero), zero);
    // t3 = log(det / qd + eps) / 2, qd = 4·sqrt(P) + eps
    const V g_u = g * half / u;
    const V g_qd = zero - g_u * det / (qd * qd);
    const V g_P = dl_where(P > zero, g_qd * two / sq, zero);
    const V g_d1 = dl_where(d1r > zero, g_P * d2, zero);
    const V g_d2 = dl_where(d2r > zero, g_P * d1, zero);
    // t1 = n1 / den / 4, t2 = n2 / den / 2
    const V g_n1 = g * quarter / den, g_n2 = g * half / den;
    const V g_det = g_u / qd - (g_n1 * n1 + g_n2 * n2) / den;
    const V g_SA = g_det * SB + g_n1 * (dy * dy);
    const V g_SB = g_det * SA + g_n1 * (dx * dx);
    const V g_SC = g_n2 * ex * dy - two * SC * g_det;
    const V g_dx = two * g_n1 * SB * dx - g_n2 * SC * dy;  // ex = -dx
    const V g_dy = two * g_n1 * SA * dy + g_n2 * SC * ex;
    gp.x = g_dx;
    gq.x = zero - g_dx;
    gp.y = g_dy;
    gq.y = zero - g_dy;
    probiou_cov_grad(p, k1, g_SA + g_d1 * k1.b, g_SB + g_d1 * k1.a, g_SC - two * k1.c * g_d1, gp);
    probiou_cov_grad(q, k2, g_SA + g_d2 * k2.b, g_SB + g_d2 * k2.a, g_SC - two * k2.c * g_d2, gq);
    if constexpr (CIOU) {  // metric -= alpha·v, alpha constant; x = w / h
      xp = p.w / p.h;
      xq = q.w / q.h;
      const V g_xq = g_dv / (one + xq * xq), g_xp = (zero - g_dv) / (one + xp * xp);
      gq.w = gq.w + g_xq / q.h;
      gq.h = gq.h - g_xq * xq / q.h;
      gp.w = gp.w + g_xp / p.h;
      gp.h = gp.h - g_xp * xp / p.h;
    }
  }
  return metric;
}

// One pair of rows (box_row(K) values each) in the op's format: the metric and, when GRAD,
// the gradients of both rows (the same format). Shared by every loop of every driver.
template <BoxKind K, bool GRAD, class V, class S>
DETLOSS_HD V box_pair(const V* a, const V* b, S eps, S floor, bool xywh, V gm, V* ga, V* gb) {
  if constexpr (is_rotated(K)) {
    const RBox<V> p{a[0], a[1], a[2], a[3], a[4]}, q{b[0], b[1], b[2], b[3], b[4]};
    RBox<V> gp, gq;
    const V m = probiou_element<K == BoxKind::kProbCIoU, GRAD>(p, q, eps, floor, gm, gp, gq);
    if constexpr (GRAD) {
      ga[0] = gp.x; ga[1] = gp.y; ga[2] = gp.w; ga[3] = gp.h; ga[4] = gp.r;
      gb[0] = gq.x; gb[1] = gq.y; gb[2] = gq.w; gb[3] = gq.h; gb[4] = gq.r;
    }
    return m;
  } else {
    Box<V> p{a[0], a[1], a[2], a[3]}, q{b[0], b[1], b[2], b[3]};
    if (xywh) {
      p = xywh_to_xyxy(p);
      q = xywh_to_xyxy(q);
    }
    Box<V> gp, gq;
    const V m = box_element<K, GRAD>(p, q, eps, gm, gp, gq);
    if constexpr (GRAD) {
      if (xywh) {
        gp = xyxy_grad_to_xywh(gp);
        gq = xyxy_grad_to_xywh(gq);
      }
      ga[0] = gp.x1; ga[1] = gp.y1; ga[2] = gp.x2; ga[3] = gp.y2;
      gb[0] = gq.x1; gb[1] = gq.y1; gb[2] = gq.x2; gb[3] = gq.y2;
    }
    return m;
  }
}

// ------------------------------------------------------------------ DETR matching cost
// The matchers of the DETR family (transformers' HungarianMatcher and its subclasses): the
// cost of query q of image b against target t of the same image, p = pred_boxes[b, q] and
// g = target_boxes[t] centre-size (cx, cy, w, h), x = logits[b, q]:
//   cost = w_bbox·L1 + w_class·class - w_giou·GIoU, each as the library rounds it:
//   L1    = |p - g| summed over the four coordinates (torch.cdist p=1)
//   class softmax: -exp(x_l - max x) / Σ_c exp(x_c - max x)              (DETR)
//         focal:   α(1 - s)^γ·(-log(s + 1e-8)) - (1 - α)s^γ·(-log(1 - s + 1e-8)), s = sigmoid(x_l)
//   GIoU  of the corners (c - 0.5·size, c + 0.5·size): iou - (area_c - union) / area_c
//   (generalized_box_iou: no eps), NaN and ±inf then the dtype's largest finite value
//   (the library's nan_to_num, in the output's dtype: done by the drivers).
//   class given: the entry [b, q, j] of a class-cost block the caller formed (Grounding
//         DINO's focal cost averaged over each target's text tokens, a matmul)
// ultralytics' HungarianMatcher (its convention): the class term first, its bbox_iou's GIoU
// of (cx, cy, w, h) with eps = 1e-7 as a cost 1 - GIoU, NaN and ±inf then 0:
//   cost = w_class·class + w_bbox·L1 + w_giou·(1 - GIoU),  L1 = ((|dx| + |dy|) + |dw|) + |dh|
//   GIoU = iou - (C - union) / C,  union = w1·h1 + w2·h2 - inter + eps,  C = cw·ch + eps
enum class MatchClass : int32_t { kSoftmax = 0, kFocal = 1, kGiven = 2 };
enum class MatchConvention : int32_t { kTransformers = 0, kUltralytics = 1 };

template <class S>
struct MatchWeights {
  S w_class, w_bbox, w_giou, alpha, one_minus_alpha, gamma;  // (1 - alpha: formed in double)
  MatchClass kind;
  MatchConvention convention;

  template <class O>
  MatchWeights<O> as() const {  // (the op's doubles in a driver's arithmetic)
    return {static_cast<O>(w_class), static_cast<O>(w_bbox), static_cast<O>(w_giou),
            static_cast<O>(alpha), static_cast<O>(one_minus_alpha), static_cast<O>(gamma), kind,
            convention};
  }
};

// max and Σ exp(x - max) of a row of C logits at `stride` (c ascending)
template <class S, class T>
DETLOSS_HD void match_softmax_stats(const T* x, int64_t C, int64_t stride, S& mx, S& sum) {
  mx = static_cast<S>(x[0]);
  for (int64_t c = 1; c < C; ++c) mx = dl_max(mx, static_cast<S>(x[c * stride]));
  sum = S(0);
  for (int64_t c = 0; c < C; ++c) sum = sum + dl_exp(static_cast<S>(x[c * stride]) - mx);
}

// x ** gamma as torch evaluates a tensor to a Python number's power (2: a square, 1: x)
template <class S>
DETLOSS_HD S match_pow(S x, S gamma) {
  return gamma == S(2) ? x * x : (gamma == S(1) ? x : dl_pow(x, gamma));
}

template <class S>
DETLOSS_HD S match_focal_class(S x, const MatchWeights<S>& w) {
  const S s = S(1) / (S(1) + dl_exp(-x));
  const S e = S(1e-8);
  const S neg = w.one_minus_alpha * match_pow(s, w.gamma) * (-dl_log(S(1) - s + e));
  const S pos = w.alpha * match_pow(S(1) - s, w.gamma) * (-dl_log(s + e));
  return pos - neg;
}

// The class term of xl, the row's entry at the target's label (the given kind: at the
// target's slot, match_column), for a row whose softmax statistics are (mx, sum) (read only
// by the softmax kind).
template <class S>
DETLOSS_HD S match_class(S xl, S mx, S sum, const MatchWeights<S>& w) {
  if (w.kind == MatchClass::kGiven) return xl;
  return w.kind == MatchClass::kSoftmax ? -(dl_exp(xl - mx) / sum) : match_focal_class(xl, w);
}

// The column of a row read for target slot j of label l.
template <class S>
DETLOSS_HD int64_t match_column(int64_t j, int64_t l, const MatchWeights<S>& w) {
  return w.kind == MatchClass::kGiven ? j : l;
}

// What nan_to_num makes of NaN and ±inf in the convention: T's largest value, or 0.
template <class T, class S>
DETLOSS_HD T match_invalid(const MatchWeights<S>& w, T big) {
  return w.convention == MatchConvention::kUltralytics ? T(0) : big;
}

// The cost rounded to the output's type T, NaN and ±inf as T's largest value (nan_to_num).
template <class T, class S>
DETLOSS_HD T match_store(S cost, T big) {
  const T v = static_cast<T>(cost);
  const S back = static_cast<S>(v);
  return back != back || back - back != S(0) ? big : v;  // (inf - inf is NaN)
}

// ultralytics' matcher: its bbox_iou(xywh=True, GIoU=True) as 1 - GIoU, in its order.
template <class S>
DETLOSS_HD S match_ultralytics_giou_cost(const S* p, const S* g) {
  const S h(0.5), eps(1e-7), zero(0);
  const S pw = p[2] * h, ph = p[3] * h, gw = g[2] * h, gh = g[3] * h;
  const S ax1 = p[0] - pw, ax2 = p[0] + pw, ay1 = p[1] - ph, ay2 = p[1] + ph;
  const S bx1 = g[0] - gw, bx2 = g[0] + gw, by1 = g[1] - gh, by2 = g[1] + gh;
  const S inter = dl_max(dl_min(ax2, bx2) - dl_max(ax1, bx1), zero) *
                  dl_max(dl_min(ay2, by2) - dl_max(ay1, by1), zero);
  const S uni = p[2] * p[3] + g[2] * g[3] - inter + eps;
  const S iou = inter / uni;
  const S cw = dl_max(ax2, bx2) - dl_min(ax1, bx1), ch = dl_max(ay2, by2) - dl_min(ay1, by1);
  const S area = cw * ch + eps;
  return S(1) - (iou - (area - uni) / area);
}

// The cost of one pair before nan_to_num; cls: the class term of the target.
template <class S>
DETLOSS_HD S match_pair_cost(const S* p, const S* g, S cls, const MatchWeights<S>& w) {
  const S l1 = dl_abs(p[0] - g[0]) + dl_abs(p[1] - g[1]) + dl_abs(p[2] - g[2]) + dl_abs(p[3] - g[3]);
  if (w.convention == MatchConvention::kUltralytics)
    return w.w_class * cls + w.w_bbox * l1 + w.w_giou * match_ultralytics_giou_cost(p, g);
  const S h(0.5);
  const S ax1 = p[0] - h * p[2], ay1 = p[1] - h * p[3], ax2 = p[0] + h * p[2], ay2 = p[1] + h * p[3];
  const S bx1 = g[0] - h * g[2], by1 = g[1] - h * g[3], bx2 = g[0] + h * g[2], by2 = g[1] + h * g[3];
  const S area1 = (ax2 - ax1) * (ay2 - ay1), area2 = (bx2 - bx1) * (by2 - by1);
  const S iw = dl_max(dl_min(ax2, bx2) - dl_max(ax1, bx1), S(0));
  const S ih = dl_max(dl_min(ay2, by2) - dl_max(ay1, by1), S(0));
  const S inter = iw * ih;
  const S uni = area1 + area2 - inter;
  const S iou = inter / uni;
  const S cw = dl_max(dl_max(ax2, bx2) - dl_min(ax1, bx1), S(0));
  const S ch = dl_max(dl_max(ay2, by2) - dl_min(ay1, by1), S(0));
  const S area = cw * ch;
  const S giou = iou - (area - uni) / area;
  return w.w_bbox * l1 + w.w_class * cls + w.w_giou * (-giou);
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
