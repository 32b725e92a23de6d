// CUDA kernels of the box family: one thread per pair for the losses (rows of 4 read with
// one vector load each; ProbIoU's rows of 5 element by element), a shared-memory tiled
// kernel for the pairwise matrix; the formula is csrc/math/box.h, the launch and
// deterministic reduction csrc/cuda/launch.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../math/box.h"
#include "../ops/box.h"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

using math::BoxKind;

// A row of R values as opmath; rows of 4 with one vector access when aligned.
template <int R, typename T, typename O>
__device__ __forceinline__ void load_row(const T* __restrict__ p, bool aligned, O* v) {
  if constexpr (R == 4) {
    if (aligned) {
      const Pack<T, 4> x = *reinterpret_cast<const Pack<T, 4>*>(p);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = static_cast<O>(x.v[k]);
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < R; ++k) v[k] = static_cast<O>(p[k]);
}

template <int R, typename T, typename O>
__device__ __forceinline__ void store_row(T* __restrict__ p, const O* v, bool aligned) {
  if constexpr (R == 4) {
    if (aligned) {
      Pack<T, 4> x;
#pragma unroll
      for (int k = 0; k < 4; ++k) x.v[k] = static_cast<T>(v[k]);
      *reinterpret_cast<Pack<T, 4>*>(p) = x;
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < R; ++k) p[k] = static_cast<T>(v[k]);
}

// One thread per pair: the loss and, with GRAD, the gradients for an upstream gradient of 1
// (the 'mean' scale included) of the boxes asked for.
template <typename T, BoxKind K, bool GRAD>
struct BoxUnit {
  using O = at::opmath_type<T>;
  static constexpr int R = math::box_row(K);
  // ProbIoU's gradient in float takes ~80 registers at ptxas's own target: held to 64 (four
  // blocks, half the SM's warps, as every fp32 box unit); with CIoU's aspect term 64 spill,
  // so three blocks (85): no spill, and the unit is bound by its arithmetic (two sincos,
  // log, expm1, exp, sqrt, atan), not by memory latency that more warps would hide
  static constexpr int kMinBlocks =
      GRAD && math::is_rotated(K) && sizeof(O) == 4 ? (K == BoxKind::kProbCIoU ? 3 : 4) : 0;
  Operand<T> pred, target, weight;
  T* __restrict__ out;  // per-pair loss or null
  T* __restrict__ grad_pred;
  T* __restrict__ grad_target;
  O grad_scale;
  O eps, floor;
  bool xywh;
  bool aligned;  // rows of 4 and every row pointer 4·sizeof(T)-aligned: one vector access a row

  __device__ __forceinline__ O operator()(int64_t i) const {
    O a[R], b[R], ga[R], gb[R];
    load_row<R>(pred.ptr + R * math::operand_index(pred, i), aligned, a);
    load_row<R>(target.ptr + R * math::operand_index(target, i), aligned, b);
    const O w = math::operand_at(weight, i, O(1));
    // loss = (1 - metric)·w: the metric's upstream gradient is -w·scale
    const O loss =
        (O(1) - math::box_pair<K, GRAD>(a, b, eps, floor, xywh, -(w * grad_scale), ga, gb)) * w;
    if (out != nullptr) out[i] = static_cast<T>(loss);
    if constexpr (GRAD) {
      if (grad_pred != nullptr) store_row<R>(grad_pred + R * i, ga, aligned);
      if (grad_target != nullptr) store_row<R>(grad_target + R * i, gb, aligned);
    }
    return loss;
  }
};

template <typename T>
bool row_aligned(const void* p) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

template <typename T, BoxKind K, bool GRAD>
void launch(const BoxArgs& a, T* out, T* sum_out, T* gp, T* gt) {
  using Unit = BoxUnit<T, K, GRAD>;
  using O = typename Unit::O;
  Unit f;
  f.pred = a.pred.typed<T>();
  f.target = a.target.typed<T>();
  f.weight = a.weight.typed<T>();
  f.out = out;
  f.grad_pred = gp;
  f.grad_target = gt;
  f.eps = static_cast<O>(a.eps);
  f.floor = static_cast<O>(a.floor);
  f.xywh = a.xywh;
  const int64_t n = a.numel();
  f.grad_scale = reduction_scale<O>(a.reduction, n);
  f.aligned = Unit::R == 4 && row_aligned<T>(f.pred.ptr) && row_aligned<T>(f.target.ptr) &&
              row_aligned<T>(gp) && row_aligned<T>(gt);
  launch_map_reduce<O, T>(n, f, sum_out, f.grad_scale, a.options.device());
}

template <typename T, bool GRAD>
void launch_kind(const BoxArgs& a, T* out, T* sum_out, T* gp, T* gt) {
  math::with_box_kind(a.kind, [&](auto k) { launch<T, k.value, GRAD>(a, out, sum_out, gp, gt); });
}

// Pairwise matrix: a block computes a 32 x 32 tile of out[b] (32 boxes of each side staged
// in shared memory); each thread writes 4 outputs, a warp 32 consecutive ones (coalesced).
constexpr int kTile = 32;

template <typename T, BoxKind K>
__global__ void __launch_bounds__(kBlock)
    box_matrix_kernel(const T* __restrict__ b1, const T* __restrict__ b2, T* __restrict__ out,
                      int64_t N, int64_t M, at::opmath_type<T> eps, at::opmath_type<T> floor,
                      bool xywh) {
  using O = at::opmath_type<T>;
  constexpr int R = math::box_row(K);
  __shared__ O s1[R][kTile];
  __shared__ O s2[R][kTile];
  const int64_t batch = blockIdx.z;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tid = threadIdx.x;
  if (tid < 2 * kTile) {
    const bool first = tid < kTile;
    const int64_t j = (first ? n0 : m0) + (tid % kTile);
    const int64_t lim = first ? N : M;
    O(*s)[kTile] = first ? s1 : s2;
    const T* p = first ? b1 + R * (batch * N + j) : b2 + R * (batch * M + j);
#pragma unroll
    for (int k = 0; k < R; ++k) s[k][tid % kTile] = j < lim ? static_cast<O>(p[k]) : O(0);
  }
  __syncthreads();
  const int tx = tid % kTile, ty = tid / kTile;  // 32 x 8 threads
  const int64_t m = m0 + tx;
  if (m >= M) return;
  O bm[R], bn[R], unused[R];
#pragma unroll
  for (int k = 0; k < R; ++k) bm[k] = s2[k][tx];
#pragma unroll
  for (int k = 0; k < kTile / (kBlock / kTile); ++k) {
    const int r = ty + k * (kBlock / kTile);
    const int64_t n = n0 + r;
    if (n < N) {
#pragma unroll
      for (int c = 0; c < R; ++c) bn[c] = s1[c][r];
      out[(batch * N + n) * M + m] = static_cast<T>(
          math::box_pair<K, false>(bn, bm, eps, floor, xywh, O(0), unused, unused));
    }
  }
}

template <typename T, BoxKind K>
void launch_matrix(const BoxMatrixArgs& a, at::Tensor& out) {
  const int64_t B = a.boxes1.size(0), N = a.boxes1.size(1), M = a.boxes2.size(1);
  if (B == 0 || N == 0 || M == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(M, kTile)), static_cast<unsigned>(ceil_div(N, kTile)),
                  static_cast<unsigned>(B));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(a.boxes1.device().index()).stream();
  launch_kernel<box_matrix_kernel<T, K>>(
      grid, kBlock, stream, a.boxes1.const_data_ptr<T>(), a.boxes2.const_data_ptr<T>(),
      out.mutable_data_ptr<T>(), N, M, static_cast<at::opmath_type<T>>(a.eps),
      static_cast<at::opmath_type<T>>(a.floor), a.xywh);
}

// The DETR matchers' cost: a unit an entry (image b, query q, target slot j) of [B, Q, Tmax],
// the softmax statistics of its row recomputed (C ~ 100: cheaper than a pass and a buffer),
// math::match_pair_cost; NaN and ±inf as the convention replaces them (math::match_invalid);
// zeros beyond the image's targets. A label outside [0, C) gives a NaN class term (the CPU
// raises; checking here would synchronise).
template <typename T>
struct MatchCostUnit {
  using O = at::opmath_type<T>;
  const T* logits;
  const T* pred;
  const int64_t* labels;
  const T* target;
  const int64_t* offsets;
  T* out;
  int64_t Q, C, Tmax;
  math::MatchWeights<O> w;
  T big;  // NaN and ±inf become this (math::match_invalid)
  __device__ __forceinline__ float operator()(int64_t u) const {
    const int64_t j = u % Tmax, r = u / Tmax, b = r / Q;
    const int64_t t0 = offsets[b], n = offsets[b + 1] - t0;
    T v = T(0);
    if (j < n) {
      const int64_t t = t0 + j, l = math::match_column(j, labels[t], w);
      const T* xr = logits + r * C;
      O cls = O(NAN);
      if (l >= 0 && l < C) {
        O mx = O(0), sum = O(1);
        if (w.kind == math::MatchClass::kSoftmax) math::match_softmax_stats(xr, C, 1, mx, sum);
        cls = math::match_class(static_cast<O>(xr[l]), mx, sum, w);
      }
      O p[4], g[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        p[k] = static_cast<O>(pred[4 * r + k]);
        g[k] = static_cast<O>(target[4 * t + k]);
      }
      v = math::match_store(math::match_pair_cost(p, g, cls, w), big);
    }
    out[u] = v;
    return 0.f;
  }
};

}  // namespace
}  // namespace cuda

at::Tensor match_cost_cuda(const MatchCostArgs& a) {
  const c10::cuda::CUDAGuard guard(a.logits.device());
  at::Tensor out = at::empty({a.B, a.Q, a.Tmax}, a.logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "detloss_match_cost_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    const math::MatchWeights<O> w = a.w.as<O>();
    const cuda::MatchCostUnit<scalar_t> f{
        a.logits.const_data_ptr<scalar_t>(), a.pred.const_data_ptr<scalar_t>(),
        a.labels.const_data_ptr<int64_t>(), a.target.const_data_ptr<scalar_t>(),
        a.offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), a.Q, a.C, a.Tmax, w,
        math::match_invalid(w, std::numeric_limits<scalar_t>::max())};
    cuda::launch_map_reduce<float, float>(out.numel(), f, nullptr, 1.f, a.logits.device());
  });
  return out;
}

at::Tensor box_forward_cuda(const BoxArgs& a) {
  const c10::cuda::CUDAGuard guard(a.options.device());
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.options) : at::empty(a.shape, a.options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.options.dtype().toScalarType(),
                                  "detloss_box_forward_cuda", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    cuda::launch_kind<scalar_t, false>(a, reduce ? nullptr : p, reduce ? p : nullptr, nullptr,
                                       nullptr);
  });
  return out;
}

BoxTriple box_forward_grad_cuda(const BoxArgs& a, bool with_loss, bool need_pred,
                                bool need_target) {
  const c10::cuda::CUDAGuard guard(a.options.device());
  const bool reduce = a.reduction != Reduction::kNone;
  std::vector<int64_t> shape(a.shape);
  shape.push_back(a.row);
  at::Tensor out, gp, gt;
  if (with_loss) out = reduce ? at::empty({}, a.options) : at::empty(a.shape, a.options);
  if (need_pred) gp = at::empty(shape, a.options);
  if (need_target) gt = at::empty(shape, a.options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.options.dtype().toScalarType(),
                                  "detloss_box_forward_grad_cuda", [&] {
    scalar_t* p = with_loss ? out.mutable_data_ptr<scalar_t>() : nullptr;
    cuda::launch_kind<scalar_t, true>(a, reduce ? nullptr : p, reduce ? p : nullptr,
                                      need_pred ? gp.mutable_data_ptr<scalar_t>() : nullptr,
                                      need_target ? gt.mutable_data_ptr<scalar_t>() : nullptr);
  });
  return {out, gp, gt};
}

at::Tensor box_matrix_cuda(const BoxMatrixArgs& a) {
  const c10::cuda::CUDAGuard guard(a.boxes1.device());
  const int64_t B = a.boxes1.size(0), N = a.boxes1.size(1), M = a.boxes2.size(1);
  TORCH_CHECK_VALUE(B <= 65535 && cuda::ceil_div(N, cuda::kTile) <= 65535, "detloss.box_iou_matrix: "
                    "at most 65535 batches and 2097120 boxes in boxes1 on CUDA, got ", B, " x ", N);
  at::Tensor out = at::empty({B, N, M}, a.boxes1.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.boxes1.scalar_type(),
                                  "detloss_box_matrix_cuda", [&] {
    math::with_box_kind(a.kind, [&](auto k) { cuda::launch_matrix<scalar_t, k.value>(a, out); });
  });
  return a.batched ? out : out.squeeze(0);
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, DETLOSS_CUDA_KEY, m) {
  m.impl("box_loss", &detloss::box_loss_entry<detloss::box_forward_cuda>);
  m.impl("box_loss_with_grad", &detloss::box_loss_with_grad_entry<detloss::box_forward_grad_cuda>);
  m.impl("box_backward", &detloss::box_backward_entry<detloss::box_forward_grad_cuda>);
  m.impl("box_iou_matrix", &detloss::box_matrix_entry<detloss::box_matrix_cuda>);
  m.impl("detr_match_cost", &detloss::match_cost_entry<detloss::match_cost_cuda>);
}
