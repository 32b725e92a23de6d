// CPU driver of the task-aligned assigner: one image per task, the phases of
// csrc/math/assign.h in order. Compiled with -ffp-contract=off (setup.py's exact sources,
// CMakeLists.txt), so the scalar formulas round as torch's separate operations do.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <vector>

#include "../math/assign.h"
#include "../ops/assign.h"

namespace detloss {
namespace cpu {
namespace {

// Phase 0 of the mask-aware overlap, image b (csrc/math/assign.h): each valid box's list, then
// for each listed pair the pixel counts over the crop of the anchor's predicted mask, a row at
// a time (every pixel's sum in math::tal_seg_pixel's order, so the bits of the CUDA driver).
template <class S, class TS>
void seg_overlaps(const math::TalView<S, TS>& vpre, const math::TalSegView<S>& sv, int64_t b,
                  int64_t* list, S* iou, S* row) {
  const int64_t M = sv.M, K = vpre.k, H = sv.H, W = sv.W, hw = H * W;
  for (int64_t m = 0; m < M; ++m) {
    const int64_t bm = b * M + m;
    math::tal_select_box(vpre, b, m, list + bm * K);
    const bool* gt = sv.gt_masks + (b * sv.Mg + m) * hw;
    int64_t gsum = -1;  // counted once a pair needs it
    for (int64_t j = 0; j < K; ++j) {
      const int64_t an = list[bm * K + j];
      if (an < 0) break;
      if (gsum < 0) gsum = std::count(gt, gt + hw, true);
      int64_t x0, x1, y0, y1;
      math::tal_seg_crop(sv, b, an, x0, x1, y0, y1);
      const S* c = sv.coef + b * sv.coef_stride[0] + an * sv.coef_stride[1];
      int64_t pm = 0, inter = 0;
      for (int64_t y = y0; y < y1 && x0 < x1; ++y) {
        std::fill(row + x0, row + x1, S(0));
        for (int64_t k = 0; k < sv.nm; ++k) {
          const S ck = c[k * sv.coef_stride[2]];
          const S* p = sv.proto + (b * sv.nm + k) * hw + y * W;
          for (int64_t x = x0; x < x1; ++x) row[x] = math::tal_add(row[x], math::tal_mul(ck, p[x]));
        }
        const bool* g = gt + y * W;
        for (int64_t x = x0; x < x1; ++x) {
          const bool on = row[x] > S(0);
          pm += on;
          inter += on && g[x];
        }
      }
      iou[bm * K + j] = math::tal_seg_quotient<S>(gsum, pm, inter);
    }
  }
}

template <class S, class TS>
TalResult run(const TalArgs& a) {
  const int64_t B = a.B, A = a.A, M = a.M, K = a.topk;
  const at::TensorOptions opts = a.pred.options();
  at::Tensor labels = at::empty({B, A}, opts.dtype(at::kLong));
  at::Tensor boxes = at::empty({B, A, a.box_dim}, opts.dtype(a.dtype));
  at::Tensor score = at::empty({B, A}, opts.dtype(a.dtype));
  at::Tensor fg = at::empty({B, A}, opts.dtype(at::kBool));
  at::Tensor gt_idx = at::empty({B, A}, opts.dtype(at::kLong));

  // anchors sorted by x, NaN last (ties by index): a box visits only the anchors in its x-range
  const S* anc = a.anchors.const_data_ptr<S>();
  std::vector<S> ax(A), ay(A), sx(A);
  std::vector<int64_t> order(A);
  for (int64_t i = 0; i < A; ++i) {
    ax[i] = anc[2 * i];
    ay[i] = anc[2 * i + 1];
  }
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t i, int64_t j) { return math::tal_x_before(ax[i], ax[j]); });
  for (int64_t i = 0; i < A; ++i) sx[i] = ax[order[i]];

  math::TalView<S, TS> v;
  v.scores = a.scores.const_data_ptr<TS>();
  for (int d = 0; d < 3; ++d) v.score_stride[d] = a.scores.stride(d);
  v.pred = a.pred.const_data_ptr<S>();
  v.anchor_x = ax.data();
  v.anchor_y = ay.data();
  v.sorted_x = sx.data();
  v.order = order.data();
  v.gt = a.gt.const_data_ptr<S>();
  v.labels = a.labels.const_data_ptr<int64_t>();
  v.valid = a.valid.const_data_ptr<bool>();
  v.B = B;
  v.A = A;
  v.M = M;
  v.C = a.C;
  v.k = static_cast<int>(K);
  v.k2 = static_cast<int>(a.topk2);
  v.alpha = static_cast<S>(a.alpha);
  v.beta = static_cast<S>(a.beta);
  v.stride_val = static_cast<S>(a.stride_val);
  v.eps = static_cast<S>(a.eps);
  v.logits = a.logits;
  v.box_dim = static_cast<int>(a.box_dim);

  // the mask-aware overlap: phase 0 fills each box's list and mask IoUs, image by image,
  // before that image's later phases read them through v
  const int64_t SK = a.seg ? a.seg_k : 0;
  std::vector<int64_t> seg_list(B * M * SK);
  std::vector<S> seg_iou(B * M * SK);
  math::TalView<S, TS> vpre = v;  // phase 0's view: the box metric + eps, 3·topk a box
  vpre.k = static_cast<int>(SK);
  vpre.box_only = true;
  math::TalSegView<S> sv{};
  if (a.seg) {
    v.seg_list = seg_list.data();
    v.seg_iou = seg_iou.data();
    v.seg_k = static_cast<int>(SK);
    sv = tal_seg_view<S>(a, v.pred);
  }

  // the keypoint assigner: each box's gate flag, image by image before that image's phase 1
  std::vector<uint8_t> gated(a.pose ? B * M : 0);
  if (a.pose) tal_pose_view(a, v, gated.data());

  int64_t* o_lab = labels.mutable_data_ptr<int64_t>();
  S* o_box = boxes.mutable_data_ptr<S>();
  S* o_score = score.mutable_data_ptr<S>();
  bool* o_fg = fg.mutable_data_ptr<bool>();
  int64_t* o_idx = gt_idx.mutable_data_ptr<int64_t>();

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> sel(M * K), owner(A), list(A), start(M + 1);
    std::vector<int32_t> cnt(A);
    std::unique_ptr<bool[]> keep(new bool[std::max<int64_t>(A, 1)]);
    std::vector<S> best_mu(M), best_ov(M);
    std::vector<S> row(a.seg ? a.W : 0);
    for (int64_t b = b0; b < b1; ++b) {
      if (a.seg) seg_overlaps(vpre, sv, b, seg_list.data(), seg_iou.data(), row.data());
      if (a.pose)
        for (int64_t m = 0; m < M; ++m) gated[b * M + m] = math::tal_box_has_gated(v, b * M + m, 0, 1);
      // 1. each box's positives
      for (int64_t m = 0; m < M; ++m) math::tal_select_box(v, b, m, sel.data() + m * K);
      // 2. anchors selected by several boxes go to the box of largest overlap
      std::fill(cnt.begin(), cnt.end(), 0);
      std::fill(owner.begin(), owner.end(), int64_t(-1));
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < K && sel[m * K + j] >= 0; ++j) {
          ++cnt[sel[m * K + j]];
          owner[sel[m * K + j]] = m;
        }
      for (int64_t i = 0; i < A; ++i)
        if (cnt[i] > 1) owner[i] = math::tal_resolve(v, b, i);
      // 3. topk2: each box keeps its best topk2 anchors (its anchors grouped by a counting sort)
      if (a.topk2 != a.topk) {
        std::fill(start.begin(), start.end(), int64_t(0));
        for (int64_t i = 0; i < A; ++i)
          if (owner[i] >= 0) ++start[owner[i] + 1];
        for (int64_t m = 0; m < M; ++m) start[m + 1] += start[m];
        std::vector<int64_t> cursor(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < A; ++i)
          if (owner[i] >= 0) list[cursor[owner[i]]++] = i;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t n = start[m + 1] - start[m];
          if (n == 0) continue;
          math::tal_keep_topk2(v, b, m, list.data() + start[m], n, keep.get());
          for (int64_t i = 0; i < n; ++i)
            if (!keep[i]) owner[list[start[m] + i]] = -1;
        }
      }
      // 4. per box, the largest metric and overlap over its positives; the targets
      std::fill(best_mu.begin(), best_mu.end(), S(0));
      std::fill(best_ov.begin(), best_ov.end(), S(0));
      for (int64_t i = 0; i < A; ++i) {
        if (owner[i] < 0) continue;
        S ov, mu;
        math::tal_pair(v, b, owner[i], i, ov, mu);
        best_mu[owner[i]] = std::max(best_mu[owner[i]], mu);
        best_ov[owner[i]] = std::max(best_ov[owner[i]], ov);
      }
      const int64_t* lab = v.labels + b * M;
      const int64_t D = a.box_dim;
      const S* gt = v.gt + D * b * M;
      for (int64_t i = 0; i < A; ++i) {
        const int64_t bi = b * A + i;
        const bool pos = owner[i] >= 0;
        const int64_t m = pos ? owner[i] : 0;  // background: box 0, as ultralytics' argmax
        o_fg[bi] = pos;
        o_idx[bi] = m;
        o_lab[bi] = M > 0 ? std::max<int64_t>(lab[m], 0) : 0;
        for (int64_t c = 0; c < D; ++c) o_box[D * bi + c] = M > 0 ? gt[D * m + c] : S(0);
        S sc = S(0);
        if (pos) {
          S ov, mu;
          math::tal_pair(v, b, m, i, ov, mu);
          sc = math::tal_mul(mu, best_ov[m]) / (best_mu[m] + v.eps);
        }
        o_score[bi] = sc;
      }
    }
  });
  return {labels, boxes.to(a.gt_dtype), score.to(a.out_dtype), fg, gt_idx};
}

}  // namespace
}  // namespace cpu

TalResult tal_assign_cpu(const TalArgs& a) {
  // a valid box's label indexes the scores: outside [0, C) ultralytics raises (IndexError)
  if (a.M > 0) {
    const int64_t* lab = a.labels.const_data_ptr<int64_t>();
    const bool* val = a.valid.const_data_ptr<bool>();
    for (int64_t i = 0, n = a.B * a.M; i < n; ++i)
      TORCH_CHECK_VALUE(!val[i] || (lab[i] >= 0 && lab[i] < a.C),
                        a.seg ? "detloss.tal_assign_seg"
                      : a.pose ? "detloss.tal_assign_pose"
                               : (a.box_dim == 5 ? "detloss.tal_assign_rotated" : "detloss.tal_assign"),
                        ": gt_labels "
                        "of a valid box must be in [0, C) = [0, ", a.C, "), got ", lab[i],
                        " (image ", i / a.M, ", box ", i % a.M, ")");
  }
  TalResult r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scores.scalar_type(),
                                  "detloss_tal_assign_cpu", [&] {
    using TS = scalar_t;
    if (a.dtype == at::kDouble) r = cpu::run<double, TS>(a);
    else r = cpu::run<float, TS>(a);
  });
  return r;
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, CPU, m) {
  m.impl("tal_assign", &detloss::tal_assign_entry<detloss::tal_assign_cpu>);
  m.impl("tal_assign_seg", &detloss::tal_assign_seg_entry<detloss::tal_assign_cpu>);
  m.impl("tal_assign_rotated", &detloss::tal_assign_entry<detloss::tal_assign_cpu, 5>);
  m.impl("tal_assign_pose", &detloss::tal_assign_pose_entry<detloss::tal_assign_cpu>);
}
