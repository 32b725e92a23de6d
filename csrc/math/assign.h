// The task-aligned assigner (TOOD; ultralytics' TaskAlignedAssigner), written once for the
// CPU and CUDA drivers (csrc/cpu/assign_kernel.cpp, csrc/cuda/assign_kernel.cu), which hold
// no formula of their own. Per image with A anchors and M ground-truth boxes:
//
//   candidates   anchor a is inside box m: box sides below stride_val enlarged to it about
//                the centre (valid boxes only), then a - (x1, y1) > eps and (x2, y2) - a > eps
//   overlap      ov(m, a) = max(CIoU(gt_m, pred_a), 0) for a candidate of a valid box, else 0,
//                CIoU as ultralytics' bbox_iou(xyxy): heights + 1e-7, its operation order
//   metric       mu(m, a) = score(a, label_m)^alpha · ov(m, a)^beta
//   top-k        box m selects the k anchors with the largest mu over ALL anchors, ties to the
//                lower anchor index (torch.topk leaves ties unordered; this is the rule here);
//                its positives are the selected candidates
//   conflicts    an anchor selected by more than one box goes to argmax_m ov(m, a) over all
//                boxes, the first on ties (torch.max's rule), even a box that did not select it
//   topk2        (when != topk) box m keeps the topk2 of its anchors by mu, the same order
//   targets      per box P(m) = max mu over its positives, O(m) = max ov over them; an anchor
//                of box m gets score mu(m, a)·O(m) / (P(m) + eps); background: label and box
//                of box 0 (ultralytics' index 0), score 0.
//
// Selection with the ordering over ALL anchors without scanning them all: the anchors that
// are not candidates of box m have mu = 0, so the order is decided among the candidates with
// mu > 0 (kept in a bounded list), and when fewer than k of them exist, the remaining slots
// go to the anchors with mu = 0 of lowest index; a candidate with mu = 0 at index a is
// among them iff a - #(candidates with mu > 0 below a) < k - #(candidates with mu > 0).
//
// The mask-aware overlap (ultralytics' SegTaskAlignedAssigner, YOLO26-seg), when the view
// carries it: phase 0 lists each valid box's 3·topk best candidates by the box metric
// mu(m, a) + eps (the order and tie rule of the top-k below; eps keeps a zero-metric candidate
// ahead of the non-candidates), and for each listed pair the IoU of the binarised, cropped
// predicted mask with the box's ground-truth mask:
//   pm(y, x)  = sum_k coef[b, a, k] · proto[b, k, y, x] > 0 (k ascending, each product and sum
//               rounded), inside the crop of pred_a · mask_scale[b] (crop_mask's pixel rule)
//   miou      = inter / max(|gt_m| + |pm| - inter, 1), pixel counts as exact integers in float32
// Every later phase then uses ov(m, a) = (max(CIoU, 0) + miou(m, a)) / 2, miou 0 off the list.
// A pixel whose sum is within rounding of 0 may binarise differently from ultralytics' matmul
// (BLAS's own order, fp16 on CUDA): exact when the products and sums are (tests use dyadic
// values); a sum of exactly 0 is not in the mask.
//
// The keypoint overlap and level gate (ultralytics' PoseTaskAlignedAssigner, YOLO26-pose), when
// the view carries them: anchor a is a candidate of box m only if, besides being inside it,
//   lo·s_a <= sqrt(max(w_m·h_m, 0)) <= hi·s_a   (the finest level open below, the coarsest above)
// unless box m has no such candidate at all (then its candidates are ungated: a pass per box
// before phase 1 decides, tal_box_has_gated); every later phase uses this candidate test, and
//   ov(m, a) = Σ_k exp(-d_k / den_k)·vis_k / max(Σ_k vis_k, 1),  d_k = |kpt_a,k - kpt_m,k|²,
//   den_k = (2·σ_k)² · (0.53·w_m·h_m + eps) · 2   (formed on the host in ultralytics' dtypes)
// where box m has a visible keypoint (visibility > 0), its CIoU overlap where it has none.
//
// Exact replication: float32 boxes go through the same operations in the same order as
// ultralytics' (no fused multiply-add: tal_mul/add/sub round each operation on CUDA; the CPU
// driver is compiled with -ffp-contract=off, setup.py's exact sources), so overlaps and
// metrics match torch's bits up to the last ulp of atan and pow, whose implementations differ
// between torch (Sleef on the CPU) and libm.
#pragma once

#include <cstdint>

#include "common.h"

namespace detloss {
namespace math {

constexpr int kTalMaxTopk = 64;  // the per-box list lives in a fixed array

inline namespace DETLOSS_CAPABILITY_NS {

// Multiply and add rounded as separate operations (never contracted into an FMA): torch
// evaluates each operation of ultralytics' formulas as its own kernel.
#if defined(__CUDA_ARCH__)
DETLOSS_HD float tal_mul(float a, float b) { return __fmul_rn(a, b); }
DETLOSS_HD double tal_mul(double a, double b) { return __dmul_rn(a, b); }
DETLOSS_HD float tal_add(float a, float b) { return __fadd_rn(a, b); }
DETLOSS_HD double tal_add(double a, double b) { return __dadd_rn(a, b); }
DETLOSS_HD float tal_sub(float a, float b) { return __fsub_rn(a, b); }
DETLOSS_HD double tal_sub(double a, double b) { return __dsub_rn(a, b); }
#else
DETLOSS_HD float tal_mul(float a, float b) { return a * b; }
DETLOSS_HD double tal_mul(double a, double b) { return a * b; }
DETLOSS_HD float tal_add(float a, float b) { return a + b; }
DETLOSS_HD double tal_add(double a, double b) { return a + b; }
DETLOSS_HD float tal_sub(float a, float b) { return a - b; }
DETLOSS_HD double tal_sub(double a, double b) { return a - b; }
#endif

// max(x, 0) propagating NaN, as Tensor.clamp_(0)
template <class S>
DETLOSS_HD S tal_clamp0(S x) {
  return x != x ? x : (x > S(0) ? x : S(0));
}

// The candidate region of a gt box (ultralytics' select_candidates_in_gts): xyxy -> xywh,
// sides below stride_val raised to it for valid boxes, back to xyxy. A rotated box (rot) is
// its corner a and sides ab, ad instead, x1/x2 then only bounding the anchors' scan.
template <class S>
struct TalRegion {
  S x1, y1, x2, y2;
  bool rot = false;
  S ax, ay, abx, aby, adx, ady, nab, nad;
};

template <class S>
DETLOSS_HD TalRegion<S> tal_region(S x1, S y1, S x2, S y2, bool valid, S stride_val) {
  const S cx = tal_add(x1, x2) / S(2), cy = tal_add(y1, y2) / S(2);
  S w = tal_sub(x2, x1), h = tal_sub(y2, y1);
  if (valid) {
    if (w < stride_val) w = stride_val;
    if (h < stride_val) h = stride_val;
  }
  const S hw = w / S(2), hh = h / S(2);
  return {tal_sub(cx, hw), tal_sub(cy, hh), tal_add(cx, hw), tal_add(cy, hh)};
}

// A rotated box xywhr (RotatedTaskAlignedAssigner.select_candidates_in_gts): sides below
// stride_val raised to it, the corners of xywhr2xyxyxyxy, a = pt1, ab = pt2 - pt1,
// ad = pt4 - pt1, in ultralytics' operation order.
template <class S>
DETLOSS_HD TalRegion<S> tal_rregion(const S* g, S stride_val) {
  S w = g[2], h = g[3];
  if (w < stride_val) w = stride_val;
  if (h < stride_val) h = stride_val;
  const S co = dl_cos(g[4]), si = dl_sin(g[4]);
  const S v1x = tal_mul(w / S(2), co), v1y = tal_mul(w / S(2), si);
  const S v2x = tal_mul(-h / S(2), si), v2y = tal_mul(h / S(2), co);
  const S px = tal_add(g[0], v1x), py = tal_add(g[1], v1y);  // ctr + vec1
  const S qx = tal_sub(g[0], v1x), qy = tal_sub(g[1], v1y);  // ctr - vec1
  TalRegion<S> r;
  r.rot = true;
  r.ax = tal_add(px, v2x);
  r.ay = tal_add(py, v2y);
  const S bx = tal_sub(px, v2x), by = tal_sub(py, v2y);
  const S dx = tal_add(qx, v2x), dy = tal_add(qy, v2y);
  const S cx = tal_sub(qx, v2x);
  r.abx = tal_sub(bx, r.ax);
  r.aby = tal_sub(by, r.ay);
  r.adx = tal_sub(dx, r.ax);
  r.ady = tal_sub(dy, r.ay);
  r.nab = tal_add(tal_mul(r.abx, r.abx), tal_mul(r.aby, r.aby));
  r.nad = tal_add(tal_mul(r.adx, r.adx), tal_mul(r.ady, r.ady));
  // the scan's x-range: the corners' bounds, widened far beyond the dot products' rounding
  // (the test below decides; a NaN corner makes an empty range)
  const S lo = dl_min(dl_min(r.ax, bx), dl_min(cx, dx)), hi = dl_max(dl_max(r.ax, bx), dl_max(cx, dx));
  const S margin = S(1e-3) * (S(1) + dl_abs(lo) + dl_abs(hi));
  r.x1 = lo - margin;
  r.x2 = hi + margin;
  r.y1 = r.y2 = S(0);
  return r;
}

template <class S>
DETLOSS_HD bool tal_inside(const TalRegion<S>& r, S ax, S ay) {
  if (r.rot) {
    const S px = tal_sub(ax, r.ax), py = tal_sub(ay, r.ay);
    const S dab = tal_add(tal_mul(px, r.abx), tal_mul(py, r.aby));
    const S dad = tal_add(tal_mul(px, r.adx), tal_mul(py, r.ady));
    return dab >= S(0) && dab <= r.nab && dad >= S(0) && dad <= r.nad;
  }
  const S eps = S(1e-9);
  return tal_sub(ax, r.x1) > eps && tal_sub(ay, r.y1) > eps && tal_sub(r.x2, ax) > eps &&
         tal_sub(r.y2, ay) > eps;
}

// max(ProbIoU, 0) of gt box g and predicted box p, both xywhr: ultralytics'
// probiou(g, p).clamp_(0) (eps 1e-7, floor 0), operation for operation: each box's Gaussian
// covariance [[a, c], [c, b]] of w²/12, h²/12 rotated by r, the Bhattacharyya distance
// t1 + t2 + t3 clamped to [eps, 100], the Hellinger distance sqrt(1 - exp(-bd) + eps).
template <class S>
struct TalCov {
  S a, b, c;
};

template <class S>
DETLOSS_HD TalCov<S> tal_cov(S w, S h, S r) {
  const S a = tal_mul(w, w) / S(12), b = tal_mul(h, h) / S(12);
  const S co = dl_cos(r), si = dl_sin(r);
  const S co2 = tal_mul(co, co), si2 = tal_mul(si, si);
  return {tal_add(tal_mul(a, co2), tal_mul(b, si2)), tal_add(tal_mul(a, si2), tal_mul(b, co2)),
          tal_mul(tal_mul(tal_sub(a, b), co), si)};
}

template <class S>
DETLOSS_HD S tal_probiou(const S* g, const S* p) {
  const S eps = S(1e-7);
  const TalCov<S> c1 = tal_cov(g[2], g[3], g[4]), c2 = tal_cov(p[2], p[3], p[4]);
  const S A = tal_add(c1.a, c2.a), B = tal_add(c1.b, c2.b), C = tal_add(c1.c, c2.c);
  const S dx = tal_sub(g[0], p[0]), dy = tal_sub(g[1], p[1]);
  const S det = tal_sub(tal_mul(A, B), tal_mul(C, C));
  const S den = tal_add(det, eps);
  const S t1 = tal_mul(tal_add(tal_mul(A, tal_mul(dy, dy)), tal_mul(B, tal_mul(dx, dx))) / den, S(0.25));
  const S t2 = tal_mul(tal_mul(tal_mul(C, tal_sub(p[0], g[0])), dy) / den, S(0.5));
  const S d1 = tal_clamp0(tal_sub(tal_mul(c1.a, c1.b), tal_mul(c1.c, c1.c)));
  const S d2 = tal_clamp0(tal_sub(tal_mul(c2.a, c2.b), tal_mul(c2.c, c2.c)));
  const S t3 = tal_mul(dl_log(tal_add(det / tal_add(tal_mul(S(4), dl_sqrt(tal_mul(d1, d2))), eps), eps)),
                       S(0.5));
  S bd = tal_add(tal_add(t1, t2), t3);
  if (bd == bd) bd = bd < eps ? eps : (bd > S(100) ? S(100) : bd);
  const S hd = dl_sqrt(tal_add(tal_sub(S(1), dl_exp(-bd)), eps));
  return tal_clamp0(tal_sub(S(1), hd));
}

// max(CIoU, 0) of gt box g and predicted box p, both xyxy: ultralytics' bbox_iou(g, p,
// xywh=False, CIoU=True).clamp_(0), operation for operation.
template <class S>
DETLOSS_HD S tal_overlap(S gx1, S gy1, S gx2, S gy2, S px1, S py1, S px2, S py2) {
  const S e = S(1e-7);
  const S w1 = tal_sub(gx2, gx1), h1 = tal_add(tal_sub(gy2, gy1), e);
  const S w2 = tal_sub(px2, px1), h2 = tal_add(tal_sub(py2, py1), e);
  const S iw = tal_clamp0(tal_sub(dl_min(gx2, px2), dl_max(gx1, px1)));
  const S ih = tal_clamp0(tal_sub(dl_min(gy2, py2), dl_max(gy1, py1)));
  const S inter = tal_mul(iw, ih);
  const S uni = tal_add(tal_sub(tal_add(tal_mul(w1, h1), tal_mul(w2, h2)), inter), e);
  const S iou = inter / uni;
  const S cw = tal_sub(dl_max(gx2, px2), dl_min(gx1, px1));
  const S ch = tal_sub(dl_max(gy2, py2), dl_min(gy1, py1));
  const S c2 = tal_add(tal_add(tal_mul(cw, cw), tal_mul(ch, ch)), e);
  const S dx = tal_sub(tal_sub(tal_add(px1, px2), gx1), gx2);
  const S dy = tal_sub(tal_sub(tal_add(py1, py2), gy1), gy2);
  const S rho2 = tal_add(tal_mul(dx, dx), tal_mul(dy, dy)) / S(4);
  const S da = tal_sub(dl_atan(w2 / h2), dl_atan(w1 / h1));
  const S v = tal_mul(S(4.0 / (3.141592653589793 * 3.141592653589793)), tal_mul(da, da));
  const S alpha = v / tal_add(tal_add(tal_sub(S(1), iou), v), e);
  return tal_clamp0(tal_sub(iou, tal_add(rho2 / c2, tal_mul(v, alpha))));
}

// base^exponent as torch.pow(tensor, python_float) gives it: exact for 1 (the default alpha)
// and 2, the library's pow otherwise.
template <class S>
DETLOSS_HD S tal_pow(S base, S exponent) {
  if (exponent == S(1)) return base;
  if (exponent == S(2)) return tal_mul(base, base);
  return dl_pow(base, exponent);
}

// The order of the top-k: larger metric first, the lower anchor index on ties.
template <class S>
DETLOSS_HD bool tal_before(S m1, int64_t a1, S m2, int64_t a2) {
  return m1 > m2 || (m1 == m2 && a1 < a2);
}

// How many of list[0, n) are below a.
DETLOSS_HD int tal_count_below(const int64_t* list, int n, int64_t a) {
  int c = 0;
  for (int i = 0; i < n; ++i) c += list[i] < a;
  return c;
}

// A bounded list of the best (metric, anchor) pairs, best first.
template <class S>
struct TalTopk {
  S metric[kTalMaxTopk];
  int64_t anchor[kTalMaxTopk];
  int size = 0;
  int k = 0;

  DETLOSS_HD void offer(S m, int64_t a) {
    if (size == k && !tal_before(m, a, metric[k - 1], anchor[k - 1])) return;
    int i = size < k ? size++ : k - 1;
    while (i > 0 && tal_before(m, a, metric[i - 1], anchor[i - 1])) {
      metric[i] = metric[i - 1];
      anchor[i] = anchor[i - 1];
      --i;
    }
    metric[i] = m;
    anchor[i] = a;
  }
  // how many listed anchors have an index below a
  DETLOSS_HD int count_below(int64_t a) const { return tal_count_below(anchor, size, a); }
};

// The inputs of one call, as plain pointers (contiguous): what every phase below reads.
// S: the arithmetic type (the boxes' and anchors' dtype: float or double); TS: the scores'.
template <class S, class TS>
struct TalView {
  const TS* scores;        // [B, A, C] at strides score_stride: probabilities, or logits
  int64_t score_stride[3];  // (a head's [B, C, A] output, permuted, is read in place)
  const S* pred;           // [B, A, box_dim]
  const S* anchor_x;       // [A]
  const S* anchor_y;       // [A]
  const S* sorted_x;       // [A] anchor x ascending
  const int64_t* order;    // [A] the anchor at each sorted position
  const S* gt;             // [B, M, box_dim]
  const int64_t* labels;   // [B, M]
  const bool* valid;       // [B, M]
  int64_t B, A, M, C;
  int k, k2;               // topk, topk2 (k2 == k: no second selection)
  int box_dim = 4;         // 4: xyxy boxes, CIoU; 5: xywhr boxes, ProbIoU (rotated)
  S alpha, beta, stride_val, eps;
  bool logits;
  // the mask-aware overlap: each box's listed pairs and their mask IoU, [B, M, seg_k], -1
  // after the last (nullptr: the box overlap alone)
  const int64_t* seg_list = nullptr;
  const S* seg_iou = nullptr;
  int seg_k = 0;
  bool box_only = false;  // phase 0's metric: the box overlap's, plus eps
  // the keypoint overlap and level gate (ultralytics' PoseTaskAlignedAssigner), when kpt_gt
  // is set (box_dim 4): OKS of the pair's keypoints where the box has a visible one
  const S* kpt_pd = nullptr;   // [B, A, K, 2] px at kpt_pd_stride (float32-rounded, as .float())
  int64_t kpt_pd_stride[4] = {0, 0, 0, 0};
  const S* kpt_gt = nullptr;   // [B, M, K, 3] px, visibility > 0 = visible
  const S* kpt_den = nullptr;  // [B, M, K]: (2·sigma_k)² · (0.53·area + eps) · 2
  int64_t nkpt = 0;
  const S* gate_side = nullptr;  // [B, M]: sqrt(max(w·h, 0))
  const S* gate_lo = nullptr;    // [A]: lo · stride (a bound the finest level does not have)
  const S* gate_hi = nullptr;    // [A]: hi · stride (nor the coarsest this one)
  const uint8_t* gate_open = nullptr;  // [A]: bit 0 finest level, bit 1 coarsest
  const uint8_t* gated = nullptr;      // [B, M]: the box has a candidate inside the gate
};

// The score of anchor a for class c of image b, as the assigner sees it: sigmoid(logit) or
// the probability, rounded to the scores' dtype (torch computes sigmoid in that dtype).
template <class S, class TS>
DETLOSS_HD S tal_score(const TalView<S, TS>& v, int64_t b, int64_t a, int64_t c) {
  if (c < 0 || c >= v.C) return S(0);  // (a label outside [0, C): see csrc/ops/assign.cpp)
  const S x = static_cast<S>(
      v.scores[b * v.score_stride[0] + a * v.score_stride[1] + c * v.score_stride[2]]);
  if (!v.logits) return x;
  return static_cast<S>(static_cast<TS>(S(1) / (S(1) + dl_exp(-x))));
}

// The mask IoU of box bm and anchor a: listed in phase 0, else 0.
template <class S, class TS>
DETLOSS_HD S tal_seg_iou(const TalView<S, TS>& v, int64_t bm, int64_t a) {
  const int64_t* list = v.seg_list + bm * v.seg_k;
  for (int j = 0; j < v.seg_k && list[j] >= 0; ++j)
    if (list[j] == a) return v.seg_iou[bm * v.seg_k + j];
  return S(0);
}

// Anchor a's level fits box bm's size: lo·s <= sqrt(area) <= hi·s, the finest level open
// below, the coarsest above (a NaN size fits only where both sides are open).
template <class S, class TS>
DETLOSS_HD bool tal_gate_ok(const TalView<S, TS>& v, int64_t bm, int64_t a) {
  const S side = v.gate_side[bm];
  const uint8_t open = v.gate_open[a];
  return ((open & 1) || side >= v.gate_lo[a]) && ((open & 2) || side <= v.gate_hi[a]);
}

// Anchor a is a candidate of valid box bm whose region is r: inside it and, for the keypoint
// assigner, on a level the gate lets through when the box has such a candidate at all.
template <class S, class TS>
DETLOSS_HD bool tal_candidate(const TalView<S, TS>& v, const TalRegion<S>& r, int64_t bm,
                              int64_t a) {
  if (!tal_inside(r, v.anchor_x[a], v.anchor_y[a])) return false;
  return v.gated == nullptr || !v.gated[bm] || tal_gate_ok(v, bm, a);
}

// OKS of box bm's keypoints and anchor a's (ultralytics' PoseTaskAlignedAssigner.pair_overlaps):
//   d_k = (px_k - gx_k)² + (py_k - gy_k)²,  oks = Σ_k exp(-d_k / den_k)·vis_k / max(Σ_k vis_k, 1)
// summed k ascending (torch's sum of the K terms takes its own order: the last ulp may
// differ). false, the box's CIoU to be used, when none of its keypoints is visible.
template <class S, class TS>
DETLOSS_HD bool tal_oks(const TalView<S, TS>& v, int64_t b, int64_t bm, int64_t a, S& oks) {
  const S* g = v.kpt_gt + bm * v.nkpt * 3;
  const S* den = v.kpt_den + bm * v.nkpt;
  const S* p = v.kpt_pd + b * v.kpt_pd_stride[0] + a * v.kpt_pd_stride[1];
  S sum = S(0);
  int n = 0;
  for (int64_t k = 0; k < v.nkpt; ++k) {
    const bool vis = g[3 * k + 2] > S(0);
    const S* pk = p + k * v.kpt_pd_stride[2];
    const S dx = tal_sub(pk[0], g[3 * k]), dy = tal_sub(pk[v.kpt_pd_stride[3]], g[3 * k + 1]);
    const S d = tal_add(tal_mul(dx, dx), tal_mul(dy, dy));
    sum = tal_add(sum, tal_mul(dl_exp(-d / den[k]), vis ? S(1) : S(0)));  // (inf·0 is NaN there too)
    n += vis;
  }
  if (n == 0) return false;
  oks = sum / S(n);
  return true;
}

// Overlap and metric of candidate a of box m (bm = b·M + m; the caller checked it is valid
// and that a is inside its region).
template <class S, class TS>
DETLOSS_HD void tal_metric(const TalView<S, TS>& v, int64_t b, int64_t bm, int64_t a, S& ov,
                           S& mu) {
  const S* g = v.gt + v.box_dim * bm;
  const S* p = v.pred + v.box_dim * (b * v.A + a);
  if (v.kpt_gt == nullptr || !tal_oks(v, b, bm, a, ov))
    ov = v.box_dim == 5 ? tal_probiou(g, p)
                        : tal_overlap(g[0], g[1], g[2], g[3], p[0], p[1], p[2], p[3]);
  if (v.seg_list != nullptr) ov = tal_add(ov, tal_seg_iou(v, bm, a)) / S(2);
  const S sa = static_cast<S>(static_cast<TS>(tal_pow(tal_score(v, b, a, v.labels[bm]), v.alpha)));
  mu = tal_mul(sa, tal_pow(ov, v.beta));
  if (v.box_only) mu = tal_add(mu, v.eps);
}

// The candidate region of box bm (valid).
template <class S, class TS>
DETLOSS_HD TalRegion<S> tal_box_region(const TalView<S, TS>& v, int64_t bm) {
  const S* g = v.gt + v.box_dim * bm;
  return v.box_dim == 5 ? tal_rregion(g, v.stride_val)
                        : tal_region(g[0], g[1], g[2], g[3], true, v.stride_val);
}

// Overlap and metric of box m and anchor a of image b: both 0 unless a is a candidate of a
// valid box m.
template <class S, class TS>
DETLOSS_HD void tal_pair(const TalView<S, TS>& v, int64_t b, int64_t m, int64_t a, S& ov,
                         S& mu) {
  ov = mu = S(0);
  const int64_t bm = b * v.M + m;
  if (!v.valid[bm]) return;
  if (tal_candidate(v, tal_box_region(v, bm), bm, a)) tal_metric(v, b, bm, a, ov, mu);
}

// The anchors' order by x: ascending, NaN last (at::sort's order, which the CUDA driver
// uses; a NaN is never a candidate, so it only has to stay out of the way), ties kept in
// index order by a stable sort.
template <class S>
DETLOSS_HD bool tal_x_before(S x1, S x2) {
  return x1 == x1 && (x2 != x2 || x1 < x2);
}

// First sorted position whose x is >= x (binary search).
template <class S>
DETLOSS_HD int64_t tal_lower_bound(const S* xs, int64_t n, S x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (xs[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// The end of a box's scan from `lo`: the first sorted position whose x is not <= x (binary
// search; the serial scan's stopping point, for xs ascending with NaN last).
template <class S>
DETLOSS_HD int64_t tal_scan_end(const S* xs, int64_t lo, int64_t n, S x) {
  int64_t hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (xs[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Phase 1, one box: its positives (the selected candidates, any order) into sel[0, k),
// -1 after the last. Only the anchors whose x lies in the box's region are visited.
template <class S, class TS>
DETLOSS_HD void tal_select_box(const TalView<S, TS>& v, int64_t b, int64_t m, int64_t* sel) {
  for (int j = 0; j < v.k; ++j) sel[j] = -1;
  const int64_t bm = b * v.M + m;
  if (!v.valid[bm]) return;
  const TalRegion<S> r = tal_box_region(v, bm);
  const int64_t lo = tal_lower_bound(v.sorted_x, v.A, r.x1);
  TalTopk<S> top;
  top.k = v.k;
  int64_t positive = 0;  // candidates with mu > 0
  for (int64_t i = lo; i < v.A && v.sorted_x[i] <= r.x2; ++i) {
    const int64_t a = v.order[i];
    if (!tal_candidate(v, r, bm, a)) continue;
    S ov, mu;
    tal_metric(v, b, bm, a, ov, mu);
    if (mu > S(0)) {
      top.offer(mu, a);
      ++positive;
    }
  }
  int n = 0;
  for (int j = 0; j < top.size; ++j) sel[n++] = top.anchor[j];
  if (positive >= v.k) return;
  // fewer than k positive metrics: the remaining slots go to the mu = 0 anchors of lowest
  // index over all anchors; those that are candidates are positives
  const int64_t free_slots = v.k - positive;
  for (int64_t i = lo; i < v.A && v.sorted_x[i] <= r.x2 && n < v.k; ++i) {
    const int64_t a = v.order[i];
    if (!tal_candidate(v, r, bm, a)) continue;
    S ov, mu;
    tal_metric(v, b, bm, a, ov, mu);
    if (!(mu > S(0)) && a - top.count_below(a) < free_slots) sel[n++] = a;
  }
}

// The keypoint assigner's gate, one box (before phase 1): whether it has a candidate on a level
// that fits its size (ultralytics' gated.any(-1); without one its candidates stay ungated).
// Scans sorted positions lo + first, lo + first + step, ... of the box's x-range.
template <class S, class TS>
DETLOSS_HD bool tal_box_has_gated(const TalView<S, TS>& v, int64_t bm, int64_t first,
                                  int64_t step) {
  if (!v.valid[bm]) return false;
  const TalRegion<S> r = tal_box_region(v, bm);
  const int64_t lo = tal_lower_bound(v.sorted_x, v.A, r.x1);
  for (int64_t i = lo + first; i < v.A && v.sorted_x[i] <= r.x2; i += step) {
    const int64_t a = v.order[i];
    if (tal_inside(r, v.anchor_x[a], v.anchor_y[a]) && tal_gate_ok(v, bm, a)) return true;
  }
  return false;
}

// Phase 2, one anchor selected by cnt > 1 boxes: the box of largest overlap over all boxes,
// the first on ties (torch.max), even one that did not select it.
template <class S, class TS>
DETLOSS_HD int64_t tal_resolve(const TalView<S, TS>& v, int64_t b, int64_t a) {
  int64_t best = 0;
  S best_ov = S(0);
  for (int64_t m = 0; m < v.M; ++m) {
    S ov, mu;
    tal_pair(v, b, m, a, ov, mu);
    if (m == 0 || ov > best_ov) {
      best = m;
      best_ov = ov;
    }
  }
  return best;
}

// topk2, one box: which of its anchors (list[0, n), any order) stay positive, written to
// keep[] (same positions); the order of phase 1 over all anchors, with the metric of this box.
template <class S, class TS>
DETLOSS_HD void tal_keep_topk2(const TalView<S, TS>& v, int64_t b, int64_t m, const int64_t* list,
                               int64_t n, bool* keep) {
  TalTopk<S> top;
  top.k = v.k2;
  int64_t positive = 0;
  for (int64_t i = 0; i < n; ++i) {
    S ov, mu;
    tal_pair(v, b, m, list[i], ov, mu);
    if (mu > S(0)) {
      top.offer(mu, list[i]);
      ++positive;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = list[i];
    S ov, mu;
    tal_pair(v, b, m, a, ov, mu);
    bool kept = false;
    if (mu > S(0)) {
      for (int j = 0; j < top.size; ++j) kept = kept || top.anchor[j] == a;
    } else {
      kept = positive < v.k2 && a - top.count_below(a) < v.k2 - positive;
    }
    keep[i] = kept;
  }
}

// The inputs of the mask IoU of phase 0 (contiguous but the coefficients, read at strides).
template <class S>
struct TalSegView {
  const S* coef;            // [B, A, nm] at coef_stride (ultralytics' permuted [B, nm, A] in place)
  int64_t coef_stride[3];
  const S* proto;           // [B, nm, H, W]
  const bool* gt_masks;     // [B, Mg, H, W], Mg >= M: box m's ground-truth mask is row m
  const S* scale;           // [B] prototype pixels per box pixel
  const S* pred;            // [B, A, 4] xyxy (the assigner's pd_bboxes)
  int64_t A, M, Mg, nm, H, W;
};

// The crop of anchor a's predicted mask: pd_bboxes · mask_scale, crop_mask's pixel rule.
template <class S>
DETLOSS_HD void tal_seg_crop(const TalSegView<S>& s, int64_t b, int64_t a, int64_t& x0,
                             int64_t& x1, int64_t& y0, int64_t& y1) {
  const S* p = s.pred + 4 * (b * s.A + a);
  const S k = s.scale[b];
  mask_span(tal_mul(p[0], k), tal_mul(p[2], k), s.W, x0, x1);
  mask_span(tal_mul(p[1], k), tal_mul(p[3], k), s.H, y0, y1);
}

// Pixel (y, x) of anchor a's predicted mask, before the crop: the coefficients' sum with the
// prototypes, k ascending, > 0 (the CPU driver sums a row at a time in the same order).
template <class S>
DETLOSS_HD bool tal_seg_pixel(const TalSegView<S>& s, int64_t b, int64_t a, int64_t y, int64_t x) {
  const S* c = s.coef + b * s.coef_stride[0] + a * s.coef_stride[1];
  const int64_t hw = s.H * s.W;
  const S* p = s.proto + b * s.nm * hw + y * s.W + x;
  S acc = S(0);
  for (int64_t k = 0; k < s.nm; ++k) acc = tal_add(acc, tal_mul(c[k * s.coef_stride[2]], p[k * hw]));
  return acc > S(0);
}

// ultralytics' inter / union.clamp(min=1) of exact float32 pixel counts, in the boxes' dtype.
template <class S>
DETLOSS_HD S tal_seg_quotient(int64_t gt, int64_t pm, int64_t inter) {
  const float u = static_cast<float>(gt) + static_cast<float>(pm) - static_cast<float>(inter);
  return static_cast<S>(static_cast<float>(inter) / (u < 1.f ? 1.f : u));
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
