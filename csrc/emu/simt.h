// A SIMT emulator for the CUDA sources in csrc/cuda: the very .cu files nvcc compiles are
// compiled by the host compiler with this header included first (csrc/emu/*_kernel.cpp), and
// their kernels run on the CPU, in a model faithful to what the code relies on:
//
// - a block's threads are fibers scheduled cooperatively: each runs until it reaches a barrier
//   or a warp collective (__syncthreads, __shfl_*_sync, __ballot_sync, __syncwarp) or exits;
//   a collective completes when every lane its mask names that has not exited has reached one
//   of the same kind, mask and width (sm_70 and later: collectives of disjoint masks proceed
//   independently), with CUDA's rules for widths and source lanes; a barrier when every
//   thread that has not exited reached it;
// - warps run in a seeded random order, each as far as it can before the next one starts, and
//   the blocks of a grid too: an order dependence between warps or blocks changes the result;
// - __shared__ memory is poisoned (every byte 0xFF: NaN for floats, -1 for integers) at the
//   start of every block, so a read that a missing barrier lets run early reads garbage;
// - misuse is an error naming the kernel and source line, never a hang: a barrier reached from
//   two places, a shuffle reading a lane outside its mask or one that has exited, a mask not
//   naming its caller or naming a lane that does not exist, a width that is not a power of 2,
//   collectives that can never complete (lanes that disagree on kind, mask or width, or wait at
//   a barrier): a deadlock; an access outside mapped memory (SIGSEGV in a kernel thread).
//
// What it cannot show: an out-of-bounds access that stays inside mapped host memory, races
// between threads in real time (its schedule is one of many), the rounding of device
// intrinsics (the host's libm runs here), speed, register and memory limits.
// Only what the kernels use is provided; a kernel using anything else fails to compile here.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <typeinfo>

// ---- the CUDA language's qualifiers and built-in variables ------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// one instance per kernel, reused by each block in turn; placed in the section that the
// emulator poisons before every block (csrc/emu/shared.ld gathers it)
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace detloss_emu {

// Set by the scheduler whenever it switches to a thread.
extern uint3 g_thread_idx, g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

enum class Collective : int { kShflDown, kShflUp, kShflXor, kShflIdx, kBallot, kSyncWarp };

// The calling thread's part of a warp collective: its value in, the collective's result out
// (the value read from the source lane; the ballot's mask).
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int operand, int width,
                         const char* file, int line);
void barrier(const char* file, int line);

// Every kernel instantiation the emulator can launch registers once, at load (KernelEntry), so
// that coverage counts what was compiled, not what happened to run.
int register_kernel(const char* tag_name);
using Thunk = void (*)(const void* closure);
void run_grid(int kernel, dim3 grid, dim3 block, Thunk thunk, const void* closure);

template <auto K>
struct KernelTag {};
template <auto K>
struct KernelEntry {
  static const int id;
};
template <auto K>
const int KernelEntry<K>::id = register_kernel(typeid(KernelTag<K>).name());

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffled values: <= 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// kernel<<<grid, block, 0, stream>>>(args...): every thread calls the kernel with the launch's
// arguments, converted to its parameters as a launch converts them (each thread its own copy).
template <auto K>
struct Launch {
  dim3 grid, block;
  template <typename... Args>
  void operator()(const Args&... args) const {
    const auto body = [&]() { K(args...); };
    using Body = decltype(body);
    run_grid(KernelEntry<K>::id, grid, block,
             [](const void* c) { (*static_cast<const Body*>(c))(); }, &body);
  }
};

}  // namespace detloss_emu

#define DETLOSS_LAUNCH(kernel, grid, block, stream) ::detloss_emu::Launch<kernel>{grid, block}

#define threadIdx (::detloss_emu::g_thread_idx)
#define blockIdx (::detloss_emu::g_block_idx)
#define blockDim (::detloss_emu::g_block_dim)
#define gridDim (::detloss_emu::g_grid_dim)
#define warpSize 32

// ---- synchronisation and warp collectives (the call site is recorded for the diagnostics) ----
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::detloss_emu::barrier(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::detloss_emu::warp_collective(::detloss_emu::Collective::kSyncWarp, mask, 0, 0, 32, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::detloss_emu::from_bits<T>(::detloss_emu::warp_collective(
      ::detloss_emu::Collective::kShflDown, mask, ::detloss_emu::to_bits(var),
      static_cast<int>(delta), width, file, line));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::detloss_emu::from_bits<T>(::detloss_emu::warp_collective(
      ::detloss_emu::Collective::kShflUp, mask, ::detloss_emu::to_bits(var),
      static_cast<int>(delta), width, file, line));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::detloss_emu::from_bits<T>(::detloss_emu::warp_collective(
      ::detloss_emu::Collective::kShflXor, mask, ::detloss_emu::to_bits(var), lane_mask, width,
      file, line));
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return ::detloss_emu::from_bits<T>(::detloss_emu::warp_collective(
      ::detloss_emu::Collective::kShflIdx, mask, ::detloss_emu::to_bits(var), src_lane, width,
      file, line));
}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return static_cast<unsigned>(::detloss_emu::warp_collective(
      ::detloss_emu::Collective::kBallot, mask, predicate != 0, 0, 32, file, line));
}

// ---- atomics: one host thread runs every fiber, so a read-modify-write is atomic -------------
// (only the integer ones the kernels use: float atomics would break the determinism rule)
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
  const unsigned old = *p;
  if (v > old) *p = v;
  return old;
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v > old) *p = v;
  return old;
}

// ---- device intrinsics ----------------------------------------------------------------------
inline unsigned __float_as_uint(float x) { return ::detloss_emu::from_bits<unsigned>(::detloss_emu::to_bits(x)); }
inline long long __double_as_longlong(double x) {
  return ::detloss_emu::from_bits<long long>(::detloss_emu::to_bits(x));
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
