// CUDA kernels of the box family: one thread per pair for the losses (rows of 4 read with
// one vector load each), a shared-memory tiled kernel for the pairwise matrix; the formula is
// csrc/math/box.h, the launch and deterministic reduction csrc/cuda/launch.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../math/box.h"
#include "../ops/box.h"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

using math::Box;
using math::BoxKind;

template <typename T, typename O>
__device__ __forceinline__ Box<O> load_row(const T* __restrict__ p, bool aligned) {
  if (aligned) {
    const Pack<T, 4> v = *reinterpret_cast<const Pack<T, 4>*>(p);
    return {static_cast<O>(v.v[0]), static_cast<O>(v.v[1]), static_cast<O>(v.v[2]),
            static_cast<O>(v.v[3])};
  }
  return {static_cast<O>(p[0]), static_cast<O>(p[1]), static_cast<O>(p[2]), static_cast<O>(p[3])};
}

template <typename T, typename O>
__device__ __forceinline__ void store_row(T* __restrict__ p, const Box<O>& b, bool aligned) {
  Pack<T, 4> v;
  v.v[0] = static_cast<T>(b.x1);
  v.v[1] = static_cast<T>(b.y1);
  v.v[2] = static_cast<T>(b.x2);
  v.v[3] = static_cast<T>(b.y2);
  if (aligned) {
    *reinterpret_cast<Pack<T, 4>*>(p) = v;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) p[k] = v.v[k];
  }
}

// One thread per pair: the loss and, with GRAD, the gradients for an upstream gradient of 1
// (the 'mean' scale included) of the boxes asked for.
template <typename T, BoxKind K, bool GRAD>
struct BoxUnit {
  using O = at::opmath_type<T>;
  Operand<T> pred, target, weight;
  T* __restrict__ out;  // per-pair loss or null
  T* __restrict__ grad_pred;
  T* __restrict__ grad_target;
  O grad_scale;
  O eps;
  bool xywh;
  bool aligned;  // every row pointer is 4·sizeof(T)-aligned: one vector access per row

  __device__ __forceinline__ O operator()(int64_t i) const {
    Box<O> a = load_row<T, O>(pred.ptr + 4 * math::operand_index(pred, i), aligned);
    Box<O> b = load_row<T, O>(target.ptr + 4 * math::operand_index(target, i), aligned);
    if (xywh) {
      a = math::xywh_to_xyxy(a);
      b = math::xywh_to_xyxy(b);
    }
    const O w = math::operand_at(weight, i, O(1));
    Box<O> ga, gb;
    // loss = (1 - metric)·w: the metric's upstream gradient is -w·scale
    const O loss = (O(1) - math::box_element<K, GRAD>(a, b, eps, -(w * grad_scale), ga, gb)) * w;
    if (out != nullptr) out[i] = static_cast<T>(loss);
    if constexpr (GRAD) {
      if (xywh) {
        ga = math::xyxy_grad_to_xywh(ga);
        gb = math::xyxy_grad_to_xywh(gb);
      }
      if (grad_pred != nullptr) store_row(grad_pred + 4 * i, ga, aligned);
      if (grad_target != nullptr) store_row(grad_target + 4 * i, gb, aligned);
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
  f.xywh = a.xywh;
  const int64_t n = a.numel();
  f.grad_scale = reduction_scale<O>(a.reduction, n);
  f.aligned = row_aligned<T>(f.pred.ptr) && row_aligned<T>(f.target.ptr) &&
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
                      int64_t N, int64_t M, at::opmath_type<T> eps, bool xywh) {
  using O = at::opmath_type<T>;
  __shared__ O s1[4][kTile];
  __shared__ O s2[4][kTile];
  const int64_t batch = blockIdx.z;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tid = threadIdx.x;
  if (tid < 2 * kTile) {
    const bool first = tid < kTile;
    const int64_t j = (first ? n0 : m0) + (tid % kTile);
    const int64_t lim = first ? N : M;
    Box<O> b{O(0), O(0), O(0), O(0)};
    if (j < lim) {
      const T* p = (first ? b1 + 4 * (batch * N + j) : b2 + 4 * (batch * M + j));
      b = {static_cast<O>(p[0]), static_cast<O>(p[1]), static_cast<O>(p[2]),
           static_cast<O>(p[3])};
      if (xywh) b = math::xywh_to_xyxy(b);
    }
    O(*s)[kTile] = first ? s1 : s2;
    s[0][tid % kTile] = b.x1;
    s[1][tid % kTile] = b.y1;
    s[2][tid % kTile] = b.x2;
    s[3][tid % kTile] = b.y2;
  }
  __syncthreads();
  const int tx = tid % kTile, ty = tid / kTile;  // 32 x 8 threads
  const int64_t m = m0 + tx;
  if (m >= M) return;
  const Box<O> bm{s2[0][tx], s2[1][tx], s2[2][tx], s2[3][tx]};
  Box<O> ga, gb;
#pragma unroll
  for (int k = 0; k < kTile / (kBlock / kTile); ++k) {
    const int r = ty + k * (kBlock / kTile);
    const int64_t n = n0 + r;
    if (n < N) {
      const Box<O> bn{s1[0][r], s1[1][r], s1[2][r], s1[3][r]};
      out[(batch * N + n) * M + m] = static_cast<T>(math::box_element<K, false>(bn, bm, eps, O(0), ga, gb));
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
      out.mutable_data_ptr<T>(), N, M, static_cast<at::opmath_type<T>>(a.eps), a.xywh);
}

}  // namespace
}  // namespace cuda

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
  shape.push_back(4);
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
}
