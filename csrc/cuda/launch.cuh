// The reusable CUDA launch machinery every family uses: a grid-stride map over "units"
// (a unit is what one thread handles per step: a vector of elements, a box pair, a row)
// with an optional deterministic sum of what each unit returns.
//
// Determinism: the grid size depends only on the number of units (never on the GPU), each
// block reduces in a fixed shuffle pattern into partials[blockIdx.x], and one block adds
// the partials in a fixed order. No float atomics: the same inputs give the same bits run to
// run, and on any GPU. Each thread's sum is compensated, the block and grid sums are double
// for float (sum_type).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

// How a kernel is launched; the SIMT emulator (csrc/emu/simt.h) defines its own, which runs
// the kernel's blocks on the CPU.
#ifndef DETLOSS_LAUNCH
#define DETLOSS_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

namespace detloss {
namespace cuda {

// Every launch goes through here: one place to check it, and one the emulator replaces.
template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
  DETLOSS_LAUNCH(Kernel, grid, block, stream)(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr int kBlock = 256;
constexpr int kMaxBlocks = 1024;  // 1024 x 256 threads: several blocks per SM on any GPU
// Kernels are declared __launch_bounds__(kBlock, MIN_BLOCKS). MIN_BLOCKS = 0 leaves the
// register budget to ptxas's own target, right for nearly every kernel here; a unit that
// needs more (some fp64 units spill around exp at that target) says so with
// `static constexpr int kMinBlocks` (registers per thread <= 65536 / (256 * kMinBlocks)).
// bench/kernel_report.py prints registers, spills and occupancy of every kernel.
template <typename F, typename = void>
struct min_blocks_of : std::integral_constant<int, 0> {};
template <typename F>
struct min_blocks_of<F, std::void_t<decltype(F::kMinBlocks)>>
    : std::integral_constant<int, F::kMinBlocks> {};

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int grid_for(int64_t units) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(units, kBlock), kMaxBlocks)));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Sum over the block (blockDim.x == kBlock); the result is valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kBlock / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kBlock / 32 ? warp_sums[lane] : acc_t(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  }
  return v;
}

// What sums accumulate in across threads: double for float (the CPU's rule: a float running
// sum over the ~400 units a thread adds at 1e8 elements drops the small terms of easy
// negatives beside O(1) positives), the type itself for double. Each thread's own sum is
// compensated (map_reduce_kernel).
template <typename acc_t>
using sum_type = std::conditional_t<std::is_same_v<acc_t, float>, double, acc_t>;

// f(u) handles unit u and returns its contribution to the sum (ignored without partials).
template <typename acc_t, typename F, int MIN_BLOCKS>
__global__ void __launch_bounds__(kBlock, MIN_BLOCKS)
    map_reduce_kernel(int64_t units, const F f, sum_type<acc_t>* __restrict__ partials) {
  // the thread's sum, compensated (Neumaier): s + c carries what a float sum would drop;
  // (two float registers: a double accumulator needs an aligned pair)
  acc_t s(0), c(0);  // (one loop for maps and sums: two would inline f twice)
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kBlock;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; u < units;
       u += stride) {
    const acc_t v = f(u);
    const acc_t t = s + v;
    const acc_t as = s < acc_t(0) ? -s : s, av = v < acc_t(0) ? -v : v;
    c += as >= av ? (s - t) + v : (v - t) + s;
    s = t;
  }
  if (partials != nullptr) {
    const sum_type<acc_t> acc = block_sum(static_cast<sum_type<acc_t>>(s) + static_cast<sum_type<acc_t>>(c));
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
  }
}

// `divisor` (device memory, may be null): the sum is divided by *divisor (a 'mean' whose
// count is only known on the device); a divisor of 0 gives 0, the mean of nothing.
template <typename acc_t, typename out_t>
__global__ void __launch_bounds__(kBlock)
    finalize_sum_kernel(const acc_t* __restrict__ partials, int n, acc_t scale,
                        const double* __restrict__ divisor, out_t* __restrict__ out) {
  acc_t v(0);
  for (int i = threadIdx.x; i < n; i += kBlock) v += partials[i];
  v = block_sum(v);
  if (threadIdx.x == 0) {
    v *= scale;
    if (divisor != nullptr) v = *divisor > 0 ? static_cast<acc_t>(v / *divisor) : acc_t(0);
    *out = static_cast<out_t>(v);
  }
}

// Runs f over [0, units) on the current stream. With `sum_out`, also writes
// scale * sum_u f(u) (divided by *divisor when given) to *sum_out (0 when units == 0),
// accumulating in acc_t.
template <typename acc_t, typename out_t, typename F>
void launch_map_reduce(int64_t units, const F& f, out_t* sum_out, acc_t scale,
                       c10::Device device, const double* divisor = nullptr) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const int grid = grid_for(units);
  if (sum_out == nullptr) {
    if (units == 0) return;
    launch_kernel<map_reduce_kernel<acc_t, F, min_blocks_of<F>::value>>(
        grid, kBlock, stream, units, f, static_cast<sum_type<acc_t>*>(nullptr));
    return;
  }
  using sum_t = sum_type<acc_t>;
  const at::Tensor partials = at::empty(
      {grid}, at::TensorOptions().device(device).dtype(c10::CppTypeToScalarType<sum_t>::value));
  sum_t* p = partials.mutable_data_ptr<sum_t>();
  int n_partials = 0;
  if (units > 0) {
    launch_kernel<map_reduce_kernel<acc_t, F, min_blocks_of<F>::value>>(grid, kBlock, stream,
                                                                        units, f, p);
    n_partials = grid;
  }
  launch_kernel<finalize_sum_kernel<sum_t, out_t>>(1, kBlock, stream, p, n_partials,
                                                   static_cast<sum_t>(scale), divisor, sum_out);
}

// g *= *up, in place, for the backward of a reduced loss whose gradient the forward computed
// (ops/common.h, scale_by_upstream). Every thread reads the device scalar first: at exactly 1
// (loss.backward()) none touches g, so the usual backward costs one launch and no traffic,
// with no host synchronisation to find that out.
template <typename T>
struct ScaleUnit {
  using O = at::opmath_type<T>;
  static constexpr int kVec = 16 / sizeof(T);
  T* __restrict__ g;
  const T* __restrict__ up;
  int64_t n;
  bool vec_ok;
  __device__ __forceinline__ O operator()(int64_t u) const {
    const O s = static_cast<O>(*up);
    if (s == O(1)) return O(0);
    const int64_t base = u * kVec;
    if (vec_ok && base + kVec <= n) {
      Pack<T, kVec> v = *reinterpret_cast<const Pack<T, kVec>*>(g + base);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v.v[j] = static_cast<T>(static_cast<O>(v.v[j]) * s);
      *reinterpret_cast<Pack<T, kVec>*>(g + base) = v;
    } else {
      for (int j = 0; j < kVec && base + j < n; ++j)
        g[base + j] = static_cast<T>(static_cast<O>(g[base + j]) * s);
    }
    return O(0);
  }
};

template <typename T>
void scale_in_place(T* g, int64_t n, const T* up, c10::Device device) {
  ScaleUnit<T> f{g, up, n, aligned16(g)};
  launch_map_reduce<at::opmath_type<T>, T>(ceil_div(n, ScaleUnit<T>::kVec), f, nullptr,
                                           at::opmath_type<T>(1), device);
}

}  // namespace cuda
}  // namespace detloss
