// CUDA driver of the prototype mask loss (csrc/math/mask.h), on the current stream, with no
// host synchronisation and no float atomics:
//   positive_kernel  a block per positive, its box's pixels in tiles of kBlock: the loss
//                    (a block sum) and, with the gradient, the coefficients' gradient (each
//                    tile's pixels split in nm-wide slices, the slices added in order);
//   ProtoGradUnit    a thread per prototype pixel: the image's positives whose box holds it,
//                    in order (positives sorted by image, stable): the prototypes' gradient.
// Memory: O(P·nm + B·nm·H·W); nothing of (positives × H × W). A positive whose batch_index
// (or, without overlap, mask_index) is out of range has a NaN loss and gradient (the CPU
// raises; checking here would synchronise).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../math/mask.h"
#include "../ops/mask.h"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

template <class T>
struct MaskView {
  using S = at::opmath_type<T>;
  const T* coef;
  const T* proto;
  const int64_t* image;
  const int64_t* index;
  const S* boxes;
  const S* area;
  const S* masks;
  const S* up;         // [P] ('none' backward) or null
  const bool* keep;    // [P]: which entries are positives, or null (all)
  const double* count;  // 'mean' with keep: the number of positives (on the device), or null
  S red;               // the reduction's scale (without count)
  int64_t P, nm, B, H, W, HW, G;
  bool overlap;

  __device__ __forceinline__ bool positive(int64_t p) const { return keep == nullptr || keep[p]; }
  // 'mean': 1 / (the number of positives); 1 for none (the sum is 0 then)
  __device__ __forceinline__ S scale_of_reduction() const {
    if (count == nullptr) return red;
    return *count > 0 ? S(1) / static_cast<S>(*count) : S(1);
  }
  __device__ __forceinline__ bool valid(int64_t p) const {
    const int64_t b = image[p], i = index[p];
    return b >= 0 && b < B && (overlap || (i >= 0 && i < G));
  }
  // the positive's target at pixel pix of its image b
  __device__ __forceinline__ S target(int64_t p, int64_t b, int64_t pix) const {
    if (overlap) return masks[b * HW + pix] == static_cast<S>(index[p] + 1) ? S(1) : S(0);
    return masks[index[p] * HW + pix];
  }
  // z = c_p · proto[b, :, pix], k in order (both kernels: the same bits); C: the
  // coefficients as S (shared memory) or as T (global memory)
  template <class C>
  __device__ __forceinline__ S logit(const C* c, int64_t b, int64_t pix) const {
    const T* pb = proto + b * nm * HW + pix;
    S z(0);
    for (int64_t k = 0; k < nm; ++k) z += static_cast<S>(c[k]) * static_cast<S>(pb[k * HW]);
    return z;
  }
};

// Per positive: the loss (before the reduction), its span [x0, x1, y0, y1) and gradient
// scale for ProtoGradUnit, and with GRAD the coefficients' gradient.
template <class T, bool GRAD>
__global__ void __launch_bounds__(kBlock)
    positive_kernel(const MaskView<T> v, at::opmath_type<T>* __restrict__ losses,
                    int32_t* __restrict__ spans, at::opmath_type<T>* __restrict__ scales,
                    T* __restrict__ grad_coef) {
  using S = at::opmath_type<T>;
  using Acc = sum_type<S>;
  __shared__ S c_s[math::kMaskMaxCoef];
  __shared__ S g_s[kBlock];
  __shared__ int32_t pix_s[kBlock];
  __shared__ S part_s[kBlock];
  const int t = threadIdx.x;
  const int nm = static_cast<int>(v.nm);
  const int slices = kBlock / nm;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const S red = v.scale_of_reduction();
  for (int64_t p = blockIdx.x; p < v.P; p += gridDim.x) {
    const bool pos = v.positive(p);
    if (!pos || !v.valid(p)) {  // (the same for the whole block)
      const S out = pos ? nan : S(0);  // not a positive: no loss, no gradient
      if (t == 0) {
        losses[p] = out;
        scales[p] = S(0);
        for (int j = 0; j < 4; ++j) spans[4 * p + j] = 0;
      }
      if (GRAD && t < nm) grad_coef[p * nm + t] = static_cast<T>(out);
      continue;
    }
    const int64_t b = v.image[p];
    const S* bx = v.boxes + 4 * p;
    int64_t x0, x1, y0, y1;
    math::mask_span(bx[0], bx[2], v.W, x0, x1);
    math::mask_span(bx[1], bx[3], v.H, y0, y1);
    const S scale = math::mask_scale((v.up ? v.up[p] : S(1)) * red, v.HW, v.area[p]);
    if (t == 0) {
      spans[4 * p] = static_cast<int32_t>(x0);
      spans[4 * p + 1] = static_cast<int32_t>(x1);
      spans[4 * p + 2] = static_cast<int32_t>(y0);
      spans[4 * p + 3] = static_cast<int32_t>(y1);
      scales[p] = scale;
    }
    if (t < nm) c_s[t] = static_cast<S>(v.coef[p * nm + t]);
    __syncthreads();
    const int64_t bw = x1 - x0, n = bw * (y1 - y0);
    const T* pb = v.proto + b * v.nm * v.HW;
    Acc ls(0);
    S dck(0);
    for (int64_t base = 0; base < n; base += kBlock) {
      const int64_t i = base + t;
      S g(0);
      int32_t pix = 0;
      if (i < n) {
        pix = static_cast<int32_t>((y0 + i / bw) * v.W + x0 + i % bw);
        const S z = v.logit(c_s, b, pix);
        S l, d(0);
        math::mask_pixel<GRAD>(z, v.target(p, b, pix), l, d);
        ls += static_cast<Acc>(l);
        g = d * scale;
      }
      if (GRAD) {
        g_s[t] = g;
        pix_s[t] = pix;
        __syncthreads();
        // d/dc[k] over this tile: slice s of k's threads takes pixels s, s + slices, ...
        const int m = static_cast<int>(n - base < kBlock ? n - base : kBlock);
        if (t < slices * nm) {
          const int k = t % nm, s = t / nm;
          S acc(0);
          for (int j = s; j < m; j += slices) acc += g_s[j] * static_cast<S>(pb[k * v.HW + pix_s[j]]);
          part_s[t] = acc;
        }
        __syncthreads();
        if (t < nm)
          for (int s = 0; s < slices; ++s) dck += part_s[s * nm + t];
        __syncthreads();
      }
    }
    const Acc total = block_sum(ls);
    if (t == 0) losses[p] = static_cast<S>(total) / static_cast<S>(v.HW) / v.area[p];
    // a non-finite scale: NaN outside the box (math::mask_poisons)
    const bool nan_outside = math::mask_poisons(scale) && n < v.HW;
    if (GRAD && t < nm) grad_coef[p * nm + t] = static_cast<T>(nan_outside ? nan : dck);
    __syncthreads();  // the shared arrays are the next positive's
  }
}

// The prototypes' gradient at one pixel of one image, 32 coefficients at a time.
template <class T>
struct ProtoGradUnit {
  using S = at::opmath_type<T>;
  static constexpr int kK = 32;
  MaskView<T> v;
  const int64_t* order;  // entries sorted by image, the positives' (the others last)
  const int64_t* off;    // [B + 1]: image b's positives are order[off[b], off[b + 1])
  const int32_t* spans;
  const S* scales;
  T* grad_proto;
  __device__ __forceinline__ S operator()(int64_t u) const {
    const int64_t b = u / v.HW, pix = u % v.HW;
    const int64_t y = pix / v.W, x = pix % v.W;  // (W > 0: there are units)
    const int64_t nm = v.nm;
    for (int64_t k0 = 0; k0 < nm; k0 += kK) {
      S acc[kK];
#pragma unroll
      for (int i = 0; i < kK; ++i) acc[i] = S(0);
      bool poison = false;
      for (int64_t j = off[b]; j < off[b + 1]; ++j) {
        const int64_t p = order[j];  // (a positive of image b: sorted so)
        if (!v.valid(p)) continue;
        const S sc = scales[p];
        const int32_t* sp = spans + 4 * p;
        if (x < sp[0] || x >= sp[1] || y < sp[2] || y >= sp[3]) {
          poison = poison || math::mask_poisons(sc);  // NaN outside the box
          continue;
        }
        const T* c = v.coef + p * nm;  // (read in place: no per-thread array of nm)
        S l, d(0);
        math::mask_pixel<true>(v.logit(c, b, pix), v.target(p, b, pix), l, d);
        const S g = d * sc;
#pragma unroll
        for (int i = 0; i < kK; ++i)
          if (k0 + i < nm) acc[i] += g * static_cast<S>(c[k0 + i]);
      }
      const S nan = std::numeric_limits<S>::quiet_NaN();
#pragma unroll
      for (int i = 0; i < kK; ++i)
        if (k0 + i < nm)
          grad_proto[(b * nm + k0 + i) * v.HW + pix] = static_cast<T>(poison ? nan : acc[i]);
    }
    return S(0);
  }
};

// The sum of the positives' losses.
template <class S>
struct LossSumUnit {
  const S* losses;
  __device__ __forceinline__ S operator()(int64_t p) const { return losses[p]; }
};

template <class T>
MaskTriple run(const MaskArgs& a, bool grad, const at::Tensor& up) {
  using S = at::opmath_type<T>;
  const c10::Device dev = a.coef.device();
  const auto opts = a.coef.options();
  const auto os = opts.dtype(c10::CppTypeToScalarType<S>::value);
  // 'mean' over a `positive` mask divides by its count, known on the device only
  const bool keep = a.keep.defined();
  const at::Tensor count = keep && a.reduction == Reduction::kMean
                               ? a.keep.sum().to(at::kDouble) : at::Tensor();
  MaskView<T> v{a.coef.const_data_ptr<T>(), a.proto.const_data_ptr<T>(),
                a.image.const_data_ptr<int64_t>(), a.index.const_data_ptr<int64_t>(),
                a.boxes.const_data_ptr<S>(), a.area.const_data_ptr<S>(),
                a.masks.const_data_ptr<S>(), up.defined() ? up.const_data_ptr<S>() : nullptr,
                keep ? a.keep.const_data_ptr<bool>() : nullptr,
                count.defined() ? count.const_data_ptr<double>() : nullptr,
                count.defined() ? S(1) : reduction_scale<S>(a.reduction, a.P), a.P, a.nm, a.B, a.H, a.W, a.H * a.W, a.G,
                a.overlap};
  at::Tensor losses = at::empty({a.P}, os);
  at::Tensor spans = at::empty({a.P * 4}, opts.dtype(at::kInt));
  at::Tensor scales = at::empty({a.P}, os);
  at::Tensor gc, gp;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev.index()).stream();
  const int grid = static_cast<int>(std::min<int64_t>(std::max<int64_t>(a.P, 1), 65535));
  if (grad) {
    gc = at::empty_like(a.coef);
    gp = at::empty_like(a.proto);
    if (a.P > 0) {
      launch_kernel<positive_kernel<T, true>>(grid, kBlock, stream, v, losses.mutable_data_ptr<S>(),
                                              spans.mutable_data_ptr<int32_t>(),
                                              scales.mutable_data_ptr<S>(), gc.mutable_data_ptr<T>());
    }
    // the positives by image; the other entries after every image (key B)
    const at::Tensor key = keep ? at::where(a.keep, a.image, a.B) : a.image;
    const auto [sorted, order] = at::sort(key, /*stable=*/true, 0, false);
    const at::Tensor off = at::searchsorted(sorted, at::arange(a.B + 1, opts.dtype(at::kLong)));
    ProtoGradUnit<T> f{v, order.const_data_ptr<int64_t>(), off.const_data_ptr<int64_t>(),
                       spans.const_data_ptr<int32_t>(), scales.const_data_ptr<S>(),
                       gp.mutable_data_ptr<T>()};
    launch_map_reduce<S, T>(a.B * a.H * a.W, f, nullptr, S(1), dev);
  } else if (a.P > 0) {
    launch_kernel<positive_kernel<T, false>>(grid, kBlock, stream, v, losses.mutable_data_ptr<S>(),
                                             spans.mutable_data_ptr<int32_t>(),
                                             scales.mutable_data_ptr<S>(), static_cast<T*>(nullptr));
  }
  if (a.reduction == Reduction::kNone) return {losses.to(a.coef.scalar_type()), gc, gp};
  at::Tensor loss = at::empty({}, opts);
  launch_map_reduce<S, T>(a.P, LossSumUnit<S>{losses.const_data_ptr<S>()},
                          loss.mutable_data_ptr<T>(), v.red, dev,
                          count.defined() ? count.const_data_ptr<double>() : nullptr);
  return {loss, gc, gp};
}

}  // namespace
}  // namespace cuda

MaskTriple mask_run_cuda(const MaskArgs& a, bool grad, const at::Tensor& up) {
  const c10::cuda::CUDAGuard guard(a.coef.device());
  MaskTriple out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.coef.scalar_type(),
                                  "detloss_prototype_mask_cuda",
                                  [&] { out = cuda::run<scalar_t>(a, grad, up); });
  return out;
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, DETLOSS_CUDA_KEY, m) {
  m.impl("prototype_mask_loss", &detloss::mask_loss_entry<detloss::mask_run_cuda>);
  m.impl("prototype_mask_loss_with_grad",
         &detloss::mask_loss_with_grad_entry<detloss::mask_run_cuda>);
  m.impl("prototype_mask_backward", &detloss::mask_backward_entry<detloss::mask_run_cuda>);
}
