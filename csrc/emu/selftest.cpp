// Kernels for the SIMT emulator's own tests (tests/test_emulator.py): each correct pattern the
// CUDA sources use beside a broken copy of it that the emulator must catch, by a wrong result
// (poisoned shared memory, the schedule's order) or by an error naming the fault.
//
//   torch.ops.detloss_emu.emu_selftest(name, x) -> Tensor
//
// In namespace detloss::cuda, as the real kernels: their __shared__ memory is poisoned too.
#include "simt.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <string>

#include "../cuda/launch.cuh"

namespace detloss {
namespace cuda {
namespace selftest {

// A block's sum, as launch.cuh's block_sum: warps reduce by shuffles, lane 0 of each warp
// writes its sum to shared memory, warp 0 adds them. BARRIER = false: the write and the read
// are not separated by __syncthreads, so warp 0 may read a slot another warp has not written.
template <bool BARRIER>
__global__ void block_sum_kernel(const float* x, float* out) {
  __shared__ float warp_sums[8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float v = x[blockIdx.x * 256 + threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) warp_sums[warp] = v;
  if (BARRIER) __syncthreads();
  if (warp == 0) {
    v = lane < 8 ? warp_sums[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) out[blockIdx.x] = v;
  }
}

// A warp's sum by __shfl_down_sync of the given width: 32 is right; 16 (the fault) leaves
// lane 0 with the sum of its half-warp only.
template <int WIDTH>
__global__ void warp_sum_kernel(const float* x, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o, WIDTH);
  if ((threadIdx.x & 31) == 0) out[i / 32] = v;
}

// Sums over groups of 4 lanes by __shfl_xor_sync, as dfl_kernel.cu's group_sum: MASK_BITS = 4
// names the caller's group (right); MASK_BITS = 2 (the fault) leaves the lanes it reads out.
template <int MASK_BITS>
__global__ void group_sum_kernel(const float* x, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31u;
  const unsigned mask = ((1u << MASK_BITS) - 1u) << (lane & ~3u);
  float v = x[i];
  for (int o = 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, 4);
  out[i] = v;
}

// Block b writes b + 1 (right) or one more than block b - 1 wrote (the fault: it depends on
// block b - 1 having run first, which no GPU promises).
template <bool CHAIN>
__global__ void block_order_kernel(float* out) {
  if (threadIdx.x != 0) return;
  const unsigned b = blockIdx.x;
  out[b] = CHAIN ? (b == 0 ? 1.f : out[b - 1] + 1.f) : static_cast<float>(b + 1);
}

// __syncthreads in divergent code: the first warp and the others reach different barriers.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Lane 31 leaves before a full-warp shuffle that names it: the shuffle goes on without it (an
// exited lane does not hold a collective up), but lane 30 reads its value, which is undefined.
__global__ void exited_lane_kernel(const float* x, float* out) {
  if (threadIdx.x == 31) return;
  float v = x[threadIdx.x];
  v += __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Lanes 0-19 first sum over groups of 4, lanes 20-31 go straight to the warp's sum and wait
// there for the others (as dfl_kernel.cu's rows and launch.cuh's block_sum do when a warp's
// last units run out): legal from sm_70 on, where collectives of disjoint masks interleave.
__global__ void staggered_kernel(const float* x, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31u;
  float v = x[i];
  if (lane < 20) {
    const unsigned mask = 0xfu << (lane & ~3u);
    for (int o = 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, 4);
  }
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) out[i / 32] = v;
}

// Half the warp shuffles down, the other half across: collectives of different kinds on one
// mask never complete (a hang on a GPU).
__global__ void mismatch_kernel(const float* x, float* out) {
  float v = x[threadIdx.x];
  if (threadIdx.x < 16) v += __shfl_down_sync(0xffffffffu, v, 1);
  else v += __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Lanes 0-15 wait at the barrier, lanes 16-31 in a shuffle that names them: a deadlock.
__global__ void barrier_in_shuffle_kernel(const float* x, float* out) {
  float v = x[threadIdx.x];
  if (threadIdx.x < 16) __syncthreads();
  else v += __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Thread 3 reads 2^40 elements past x: unmapped memory.
__global__ void out_of_bounds_kernel(const float* x, float* out) {
  const int64_t far = threadIdx.x == 3 ? int64_t(1) << 40 : 0;
  out[threadIdx.x] = x[threadIdx.x + far];
}

// A read of shared memory no thread wrote yet: the poison's bits. (The write that no thread
// reaches keeps the host compiler from folding a never-written static to its zero.)
__global__ void poison_kernel(float* out) {
  __shared__ float unwritten[4];
  out[threadIdx.x] = unwritten[threadIdx.x % 4];
  if (threadIdx.x > 4096) unwritten[0] = 0.f;
}

// Each lane 2x + its ballot bit count below it: __ballot_sync and __popc as a warp compaction
// uses them (the assigner's), against a prefix computed in the host.
__global__ void ballot_kernel(const float* x, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31u;
  const unsigned b = __ballot_sync(0xffffffffu, x[i] > 0.f);
  out[i] = static_cast<float>(__popc(b & ((1u << lane) - 1u)));
}

}  // namespace selftest
}  // namespace cuda
}  // namespace detloss

namespace {

using namespace detloss::cuda;
using namespace detloss::cuda::selftest;

at::Tensor run_selftest(c10::string_view name_sv, const at::Tensor& x0) {
  const std::string name(name_sv.data(), name_sv.size());
  const at::Tensor x = x0.to(at::kFloat).contiguous();
  const float* xp = x.const_data_ptr<float>();
  const int64_t n = x.numel();
  TORCH_CHECK(n % 256 == 0 && n > 0, "emu_selftest: x must hold a positive multiple of 256 values");
  const unsigned blocks = static_cast<unsigned>(n / 256);
  const cudaStream_t s = nullptr;
  if (name == "block_sum" || name == "block_sum_no_barrier") {
    at::Tensor out = at::empty({blocks}, x.options());
    if (name == "block_sum") launch_kernel<block_sum_kernel<true>>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
    else launch_kernel<block_sum_kernel<false>>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "warp_sum" || name == "warp_sum_width16") {
    at::Tensor out = at::empty({n / 32}, x.options());
    if (name == "warp_sum") launch_kernel<warp_sum_kernel<32>>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
    else launch_kernel<warp_sum_kernel<16>>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "group_sum" || name == "group_sum_narrow_mask") {
    at::Tensor out = at::empty({n}, x.options());
    if (name == "group_sum") launch_kernel<group_sum_kernel<4>>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
    else launch_kernel<group_sum_kernel<2>>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
    return out;
  }
  if (name == "block_order" || name == "block_order_chain") {
    at::Tensor out = at::zeros({blocks}, x.options());
    if (name == "block_order") launch_kernel<block_order_kernel<false>>(blocks, 256, s, out.mutable_data_ptr<float>());
    else launch_kernel<block_order_kernel<true>>(blocks, 256, s, out.mutable_data_ptr<float>());
    return out;
  }
  at::Tensor out = at::zeros({256}, x.options());
  if (name == "divergent_barrier") {
    launch_kernel<divergent_barrier_kernel>(1, 256, s, out.mutable_data_ptr<float>());
  } else if (name == "exited_lane") {
    launch_kernel<exited_lane_kernel>(1, 32, s, xp, out.mutable_data_ptr<float>());
  } else if (name == "poison") {
    launch_kernel<poison_kernel>(1, 256, s, out.mutable_data_ptr<float>());
  } else if (name == "out_of_bounds") {
    launch_kernel<out_of_bounds_kernel>(1, 32, s, xp, out.mutable_data_ptr<float>());
  } else if (name == "mismatch") {
    launch_kernel<mismatch_kernel>(1, 32, s, xp, out.mutable_data_ptr<float>());
  } else if (name == "barrier_in_shuffle") {
    launch_kernel<barrier_in_shuffle_kernel>(1, 32, s, xp, out.mutable_data_ptr<float>());
  } else if (name == "staggered") {
    out = at::empty({n / 32}, x.options());
    launch_kernel<staggered_kernel>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
  } else if (name == "ballot") {
    out = at::empty({n}, x.options());
    launch_kernel<ballot_kernel>(blocks, 256, s, xp, out.mutable_data_ptr<float>());
  } else {
    TORCH_CHECK_VALUE(false, "emu_selftest: no kernel named '", name, "'");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detloss_emu, m) {
  m.def("emu_selftest(str name, Tensor x) -> Tensor", &run_selftest);
}
