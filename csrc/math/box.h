// The IoU family of box losses: IoU, GIoU, DIoU, CIoU, and the pairwise metric.
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

enum class BoxKind : int32_t { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

// The one switch from a run-time kind to the code compiled for it (host code): calls
// f(std::integral_constant<BoxKind, K>()).
template <class F>
inline decltype(auto) with_box_kind(BoxKind kind, F&& f) {
  switch (kind) {
    case BoxKind::kGIoU: return f(std::integral_constant<BoxKind, BoxKind::kGIoU>());
    case BoxKind::kDIoU: return f(std::integral_constant<BoxKind, BoxKind::kDIoU>());
    case BoxKind::kCIoU: return f(std::integral_constant<BoxKind, BoxKind::kCIoU>());
    default: return f(std::integral_constant<BoxKind, BoxKind::kIoU>());
  }
}

template <class V>
struct Box {
  V x1, y1, x2, y2;
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

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
