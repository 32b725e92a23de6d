// CUDA driver of the task-aligned assigner (and its mask-aware overlap): the phases of
// csrc/math/assign.h, a warp per box for the selections (each box scans its anchors, the long
// part), a thread per anchor for the rest, on the current stream, with no host synchronisation. Memory: O(B·A + B·M·topk), never
// (B, M, A). Deterministic: the only atomics count integers and take maxima.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../math/assign.h"
#include "../ops/assign.h"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

template <class S, class TS>
using View = math::TalView<S, TS>;

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// The warp's merge of its lanes' top-k lists (each best first): `rounds` rounds, each handing
// every lane the best head left among the 32 (a butterfly under tal_before's total order:
// larger metric, then lower anchor index; anchors are distinct, so the winner is one lane's)
// into merged[r]. The same order as one list fed every anchor: the same selection, bit for bit.
template <class S>
__device__ __forceinline__ void warp_merge(const math::TalTopk<S>& mine, int rounds,
                                           int64_t* merged) {
  int head = 0;
  for (int r = 0; r < rounds; ++r) {
    const bool has = head < mine.size;
    S m = has ? mine.metric[head] : S(0);
    int64_t a = has ? mine.anchor[head] : int64_t(-1);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const S om = __shfl_xor_sync(kFull, m, o);
      const int64_t oa = __shfl_xor_sync(kFull, a, o);
      if (oa >= 0 && (a < 0 || math::tal_before(om, oa, m, a))) {
        m = om;
        a = oa;
      }
    }
    merged[r] = a;
    if (has && mine.anchor[head] == a) ++head;
  }
}

// 1. each box's positives, sel[(b·M + m)·k + j] (-1 after the last): math::tal_select_box
// spread over a warp. Unit u is lane u % 32 of box u / 32 (the grid-stride loop keeps a warp
// on one box). Each lane scans every 32nd anchor of the box's x-range into a top-k list of its
// own; the warp merges them and counts the candidates with a positive metric; with fewer than
// k of those, the mu = 0 candidates that take the free slots are found 32 at a time, their
// slots given in scan order by a ballot. sel comes out as the serial function writes it.
template <class S, class TS>
struct SelectUnit {
  View<S, TS> v;
  int64_t* sel;
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int lane = static_cast<int>(u & 31);
    const int64_t bm = u >> 5, b = bm / v.M;
    int64_t* out = sel + bm * v.k;
    if (!v.valid[bm]) {  // (the same for every lane: one box a warp)
      for (int j = lane; j < v.k; j += 32) out[j] = -1;
      return 0.f;
    }
    const math::TalRegion<S> r = math::tal_box_region(v, bm);
    const int64_t lo = math::tal_lower_bound(v.sorted_x, v.A, r.x1);
    const int64_t hi = math::tal_scan_end(v.sorted_x, lo, v.A, r.x2);
    math::TalTopk<S> top;
    top.k = v.k;
    int positive = 0;
    for (int64_t i = lo + lane; i < hi; i += 32) {
      const int64_t a = v.order[i];
      if (!math::tal_candidate(v, r, bm, a)) continue;
      S ov, mu;
      math::tal_metric(v, b, bm, a, ov, mu);
      if (mu > S(0)) {
        top.offer(mu, a);
        ++positive;
      }
    }
    positive = warp_sum(positive);
    const int listed = positive < v.k ? positive : v.k;
    int64_t merged[math::kTalMaxTopk];
    warp_merge(top, listed, merged);
    for (int j = lane; j < listed; j += 32) out[j] = merged[j];
    int n = listed;
    if (positive < v.k) {
      const int64_t free_slots = v.k - positive;
      for (int64_t first = lo; first < hi; first += 32) {
        const int64_t i = first + lane;
        int64_t a = -1;
        bool fill = false;
        if (i < hi) {
          a = v.order[i];
          if (math::tal_candidate(v, r, bm, a)) {
            S ov, mu;
            math::tal_metric(v, b, bm, a, ov, mu);
            fill = !(mu > S(0)) && a - math::tal_count_below(merged, listed, a) < free_slots;
          }
        }
        const unsigned ballot = __ballot_sync(kFull, fill);
        const int slot = n + __popc(ballot & ((1u << lane) - 1u));
        if (fill && slot < v.k) out[slot] = a;  // (at most free_slots qualify: always)
        n += __popc(ballot);
      }
    }
    for (int j = (n < v.k ? n : v.k) + lane; j < v.k; j += 32) out[j] = -1;
    return 0.f;
  }
};

// 0. the keypoint assigner's gate: whether box u / 32 has a candidate on a level that fits its
// size (math::tal_box_has_gated, the lanes taking every 32nd position of its x-range)
template <class S, class TS>
struct GateUnit {
  View<S, TS> v;
  uint8_t* gated;  // [B·M]
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int lane = static_cast<int>(u & 31);
    const int64_t bm = u >> 5;
    const bool any = __ballot_sync(kFull, math::tal_box_has_gated(v, bm, lane, 32)) != 0u;
    if (lane == 0) gated[bm] = any;
    return 0.f;
  }
};

// 0. the mask-aware overlap (after SelectUnit has listed each box's 3·topk pairs): the pixel
// counts of each box's ground-truth mask, a unit per mask row; of each listed pair's cropped
// predicted mask and its intersection, a unit per pair and crop row; then the quotients.
// Integer atomics only: the same counts in any order.
template <class S>
struct GtCountUnit {
  math::TalSegView<S> s;
  const bool* valid;
  int* gsum;  // [B·M]
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int64_t bm = u / s.H, y = u % s.H;
    if (!valid[bm]) return 0.f;
    const bool* g = s.gt_masks + ((bm / s.M) * s.Mg + bm % s.M) * s.H * s.W + y * s.W;
    int c = 0;
    for (int64_t x = 0; x < s.W; ++x) c += g[x];
    if (c) atomicAdd(gsum + bm, c);
    return 0.f;
  }
};

template <class S>
struct PairRowUnit {
  math::TalSegView<S> s;
  const int64_t* list;  // [B·M·K]
  int64_t K;
  int* pm;              // [B·M·K] predicted-mask pixels
  int* inter;           // [B·M·K] of them in the ground truth
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int64_t slot = u / s.H, y = u % s.H;
    const int64_t a = list[slot];
    if (a < 0) return 0.f;
    const int64_t bm = slot / K, b = bm / s.M;
    int64_t x0, x1, y0, y1;
    math::tal_seg_crop(s, b, a, x0, x1, y0, y1);
    if (y < y0 || y >= y1) return 0.f;
    const bool* g = s.gt_masks + (b * s.Mg + bm % s.M) * s.H * s.W + y * s.W;
    int np = 0, ni = 0;
    for (int64_t x = x0; x < x1; ++x) {
      const bool on = math::tal_seg_pixel(s, b, a, y, x);
      np += on;
      ni += on && g[x];
    }
    if (np) atomicAdd(pm + slot, np);
    if (ni) atomicAdd(inter + slot, ni);
    return 0.f;
  }
};

template <class S>
struct SegIouUnit {
  const int64_t* list;
  int64_t K;
  const int* gsum;
  const int* pm;
  const int* inter;
  S* iou;
  __device__ __forceinline__ float operator()(int64_t slot) const {
    if (list[slot] >= 0) iou[slot] = math::tal_seg_quotient<S>(gsum[slot / K], pm[slot], inter[slot]);
    return 0.f;
  }
};

// 2a. count the boxes that selected each anchor; owner = the first to count it
template <class S, class TS>
struct ScatterUnit {
  View<S, TS> v;
  const int64_t* sel;
  int32_t* cnt;
  int64_t* owner;
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int64_t bm = u / v.k;
    const int64_t a = sel[u];
    if (a >= 0) {
      const int64_t i = (bm / v.M) * v.A + a;
      // the first box to count it writes; read only where cnt == 1 (then it is the only one)
      if (atomicAdd(cnt + i, 1) == 0) owner[i] = bm % v.M;
    }
    return 0.f;
  }
};

// 2b. anchors selected by several boxes: the box of largest overlap
template <class S, class TS>
struct ResolveUnit {
  View<S, TS> v;
  const int32_t* cnt;
  int64_t* owner;
  __device__ __forceinline__ float operator()(int64_t i) const {
    const int32_t c = cnt[i];
    if (c == 0) owner[i] = -1;
    else if (c > 1) owner[i] = math::tal_resolve(v, i / v.A, i % v.A);
    return 0.f;
  }
};

// 3. topk2 (when != topk): group the anchors by box (count, scan, fill), then each box keeps
// its best topk2; the order inside a group does not matter (the selection is a total order)
struct BoxCountUnit {
  const int64_t* owner;
  int64_t A, M;
  int64_t* count;  // [B·M]
  __device__ __forceinline__ float operator()(int64_t i) const {
    if (owner[i] >= 0) atomicAdd(reinterpret_cast<unsigned long long*>(count + (i / A) * M + owner[i]), 1ull);
    return 0.f;
  }
};

struct FillUnit {
  const int64_t* owner;
  int64_t A, M;
  const int64_t* end;  // inclusive scan of the counts
  const int64_t* count;
  int64_t* cursor;     // [B·M], zeros
  int64_t* list;
  __device__ __forceinline__ float operator()(int64_t i) const {
    if (owner[i] < 0) return 0.f;
    const int64_t bm = (i / A) * M + owner[i];
    const int64_t at = end[bm] - count[bm] +
                       static_cast<int64_t>(atomicAdd(reinterpret_cast<unsigned long long*>(cursor + bm), 1ull));
    list[at] = i % A;
    return 0.f;
  }
};

// ... then each box keeps its best topk2: math::tal_keep_topk2 spread over a warp (unit u is
// lane u % 32 of box u / 32), the lanes taking every 32nd anchor of the box's group; the
// anchors it drops lose their owner.
template <class S, class TS>
struct KeepUnit {
  View<S, TS> v;
  const int64_t* end;
  const int64_t* count;
  const int64_t* list;
  int64_t* owner;
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int lane = static_cast<int>(u & 31);
    const int64_t bm = u >> 5, b = bm / v.M, m = bm % v.M;
    const int64_t n = count[bm], first = end[bm] - n;
    if (n == 0) return 0.f;  // (the same for every lane)
    math::TalTopk<S> top;
    top.k = v.k2;
    int positive = 0;
    for (int64_t j = lane; j < n; j += 32) {
      S ov, mu;
      math::tal_pair(v, b, m, list[first + j], ov, mu);
      if (mu > S(0)) {
        top.offer(mu, list[first + j]);
        ++positive;
      }
    }
    positive = warp_sum(positive);
    const int listed = positive < v.k2 ? positive : v.k2;
    int64_t merged[math::kTalMaxTopk];
    warp_merge(top, listed, merged);
    for (int64_t j = lane; j < n; j += 32) {
      const int64_t a = list[first + j];
      S ov, mu;
      math::tal_pair(v, b, m, a, ov, mu);
      bool kept = false;
      if (mu > S(0)) {
        for (int t = 0; t < listed; ++t) kept = kept || merged[t] == a;
      } else {
        kept = positive < v.k2 && a - math::tal_count_below(merged, listed, a) < v.k2 - positive;
      }
      if (!kept) owner[b * v.A + a] = -1;
    }
    return 0.f;
  }
};

// 4. per box, the largest metric and overlap over its positives: maxima of non-negative
// floating values, taken on their bit patterns (order-independent, so deterministic)
__device__ __forceinline__ void atomic_max_nonneg(float* p, float x) {
  atomicMax(reinterpret_cast<unsigned int*>(p), __float_as_uint(x));
}
__device__ __forceinline__ void atomic_max_nonneg(double* p, double x) {
  atomicMax(reinterpret_cast<unsigned long long*>(p),
            static_cast<unsigned long long>(__double_as_longlong(x)));
}

template <class S, class TS>
struct MaxUnit {
  View<S, TS> v;
  const int64_t* owner;
  S* best_mu;
  S* best_ov;
  __device__ __forceinline__ float operator()(int64_t i) const {
    const int64_t m = owner[i];
    if (m < 0) return 0.f;
    const int64_t b = i / v.A;
    S ov, mu;
    math::tal_pair(v, b, m, i % v.A, ov, mu);
    if (mu > S(0)) atomic_max_nonneg(best_mu + b * v.M + m, mu);
    if (ov > S(0)) atomic_max_nonneg(best_ov + b * v.M + m, ov);
    return 0.f;
  }
};

// 5. the outputs
template <class S, class TS>
struct OutputUnit {
  View<S, TS> v;
  const int64_t* owner;
  const S* best_mu;
  const S* best_ov;
  int64_t* labels;
  S* boxes;
  S* score;
  bool* fg;
  int64_t* gt_idx;
  __device__ __forceinline__ float operator()(int64_t i) const {
    const int64_t b = i / v.A;
    const bool pos = owner[i] >= 0;
    const int64_t m = pos ? owner[i] : 0;  // background: box 0, as ultralytics' argmax
    const int64_t bm = b * v.M + m;
    fg[i] = pos;
    gt_idx[i] = m;
    labels[i] = v.labels[bm] > 0 ? v.labels[bm] : 0;
#pragma unroll
    for (int c = 0; c < 5; ++c)
      if (c < v.box_dim) boxes[v.box_dim * i + c] = v.gt[v.box_dim * bm + c];
    S sc = S(0);
    if (pos) {
      S ov, mu;
      math::tal_pair(v, b, m, i % v.A, ov, mu);
      sc = math::tal_mul(mu, best_ov[bm]) / (best_mu[bm] + v.eps);
    }
    score[i] = sc;
    return 0.f;
  }
};

template <class F>
void run_units(int64_t n, const F& f, c10::Device d) {
  launch_map_reduce<float, float>(n, f, nullptr, 1.f, d);
}

template <class S, class TS>
TalResult run(const TalArgs& a) {
  const int64_t B = a.B, A = a.A, M = a.M, K = a.topk;
  const c10::Device dev = a.pred.device();
  const at::TensorOptions opts = a.pred.options();
  const at::TensorOptions i64 = opts.dtype(at::kLong);
  at::Tensor labels = at::empty({B, A}, i64);
  at::Tensor boxes = at::empty({B, A, a.box_dim}, opts.dtype(a.dtype));
  at::Tensor score = at::empty({B, A}, opts.dtype(a.dtype));
  at::Tensor fg = at::empty({B, A}, opts.dtype(at::kBool));
  at::Tensor gt_idx = at::empty({B, A}, i64);
  if (B * A == 0) return {labels, boxes.to(a.gt_dtype), score.to(a.out_dtype), fg, gt_idx};

  // anchors sorted by x, on the device (stable: ties keep index order; NaN last, as
  // math::tal_x_before orders them on the CPU)
  const at::Tensor ax = a.anchors.select(1, 0).contiguous();
  const at::Tensor ay = a.anchors.select(1, 1).contiguous();
  auto [sx, order] = at::sort(ax, /*stable=*/true, /*dim=*/0, /*descending=*/false);

  View<S, TS> v;
  v.scores = a.scores.const_data_ptr<TS>();
  for (int d = 0; d < 3; ++d) v.score_stride[d] = a.scores.stride(d);
  v.pred = a.pred.const_data_ptr<S>();
  v.anchor_x = ax.const_data_ptr<S>();
  v.anchor_y = ay.const_data_ptr<S>();
  v.sorted_x = sx.const_data_ptr<S>();
  v.order = order.const_data_ptr<int64_t>();
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

  // 0. the mask-aware overlap: each box's 3·topk pairs by the box metric, their mask IoUs
  at::Tensor seg_list, seg_iou;
  if (a.seg && M > 0) {
    const int64_t SK = a.seg_k;
    View<S, TS> vpre = v;
    vpre.k = static_cast<int>(SK);
    vpre.box_only = true;
    const math::TalSegView<S> sv = tal_seg_view<S>(a, v.pred);
    seg_list = at::empty({B * M * SK}, i64);
    seg_iou = at::zeros({B * M * SK}, opts.dtype(a.dtype));
    const at::Tensor counts = at::zeros({B * M + 2 * B * M * SK}, opts.dtype(at::kInt));
    int* gsum = counts.mutable_data_ptr<int>();
    int* pm = gsum + B * M;
    int* inter = pm + B * M * SK;
    const int64_t* list = seg_list.const_data_ptr<int64_t>();
    run_units(B * M * 32, SelectUnit<S, TS>{vpre, seg_list.mutable_data_ptr<int64_t>()}, dev);
    if (a.H * a.W > 0) {
      run_units(B * M * a.H, GtCountUnit<S>{sv, v.valid, gsum}, dev);
      run_units(B * M * SK * a.H, PairRowUnit<S>{sv, list, SK, pm, inter}, dev);
    }
    run_units(B * M * SK, SegIouUnit<S>{list, SK, gsum, pm, inter, seg_iou.mutable_data_ptr<S>()}, dev);
    v.seg_list = list;
    v.seg_iou = seg_iou.const_data_ptr<S>();
    v.seg_k = static_cast<int>(SK);
  }

  // 0. the keypoint assigner: each box's gate flag
  at::Tensor gated;
  if (a.pose && M > 0) {
    gated = at::empty({B * M}, opts.dtype(at::kByte));
    tal_pose_view(a, v, nullptr);  // (the gate pass tests the level, not yet the flag)
    run_units(B * M * 32, GateUnit<S, TS>{v, gated.mutable_data_ptr<uint8_t>()}, dev);
    v.gated = gated.const_data_ptr<uint8_t>();
  }

  at::Tensor owner = at::empty({B * A}, i64);
  int64_t* own = owner.mutable_data_ptr<int64_t>();
  if (M > 0) {
    at::Tensor sel = at::empty({B * M * K}, i64);
    at::Tensor cnt = at::zeros({B * A}, opts.dtype(at::kInt));
    run_units(B * M * 32, SelectUnit<S, TS>{v, sel.mutable_data_ptr<int64_t>()}, dev);
    run_units(B * M * K, ScatterUnit<S, TS>{v, sel.const_data_ptr<int64_t>(),
                                              cnt.mutable_data_ptr<int32_t>(), own}, dev);
    run_units(B * A, ResolveUnit<S, TS>{v, cnt.const_data_ptr<int32_t>(), own}, dev);
    if (a.topk2 != a.topk) {
      at::Tensor count = at::zeros({B * M}, i64);
      run_units(B * A, BoxCountUnit{own, A, M, count.mutable_data_ptr<int64_t>()}, dev);
      const at::Tensor end = at::cumsum(count, 0);
      at::Tensor cursor = at::zeros({B * M}, i64);
      at::Tensor list = at::empty({B * A}, i64);
      run_units(B * A, FillUnit{own, A, M, end.const_data_ptr<int64_t>(),
                                count.const_data_ptr<int64_t>(), cursor.mutable_data_ptr<int64_t>(),
                                list.mutable_data_ptr<int64_t>()}, dev);
      run_units(B * M * 32, KeepUnit<S, TS>{v, end.const_data_ptr<int64_t>(),
                                            count.const_data_ptr<int64_t>(),
                                            list.const_data_ptr<int64_t>(), own}, dev);
    }
  } else {
    owner.fill_(-1);
  }
  at::Tensor best_mu = at::zeros({std::max<int64_t>(B * M, 1)}, opts.dtype(a.dtype));
  at::Tensor best_ov = at::zeros({std::max<int64_t>(B * M, 1)}, opts.dtype(a.dtype));
  if (M > 0) {
    run_units(B * A, MaxUnit<S, TS>{v, own, best_mu.mutable_data_ptr<S>(),
                                    best_ov.mutable_data_ptr<S>()}, dev);
    run_units(B * A, OutputUnit<S, TS>{v, own, best_mu.const_data_ptr<S>(),
                                       best_ov.const_data_ptr<S>(), labels.mutable_data_ptr<int64_t>(),
                                       boxes.mutable_data_ptr<S>(), score.mutable_data_ptr<S>(),
                                       fg.mutable_data_ptr<bool>(), gt_idx.mutable_data_ptr<int64_t>()},
              dev);
  } else {
    labels.zero_();
    boxes.zero_();
    score.zero_();
    fg.zero_();
    gt_idx.zero_();
  }
  return {labels, boxes.to(a.gt_dtype), score.to(a.out_dtype), fg, gt_idx};
}

}  // namespace
}  // namespace cuda

// A valid box's label outside [0, C) indexes no score: ultralytics fails on a device-side
// assert; checking here would synchronise, so such a box scores 0 on CUDA (the CPU raises).
TalResult tal_assign_cuda(const TalArgs& a) {
  const c10::cuda::CUDAGuard guard(a.pred.device());
  TalResult r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scores.scalar_type(),
                                  "detloss_tal_assign_cuda", [&] {
    using TS = scalar_t;
    if (a.dtype == at::kDouble) r = cuda::run<double, TS>(a);
    else r = cuda::run<float, TS>(a);
  });
  return r;
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, DETLOSS_CUDA_KEY, m) {
  m.impl("tal_assign", &detloss::tal_assign_entry<detloss::tal_assign_cuda>);
  m.impl("tal_assign_seg", &detloss::tal_assign_seg_entry<detloss::tal_assign_cuda>);
  m.impl("tal_assign_rotated", &detloss::tal_assign_entry<detloss::tal_assign_cuda, 5>);
  m.impl("tal_assign_pose", &detloss::tal_assign_pose_entry<detloss::tal_assign_cuda>);
}
