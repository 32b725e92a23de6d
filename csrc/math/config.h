// Compilation environment of the shared formulas: host/device qualifiers and the
// per-CPU-capability inline namespace. Included first by every header in csrc/math/.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DETLOSS_HD __host__ __device__ __forceinline__
#else
#define DETLOSS_HD inline
#endif

// Every inline function in csrc/math/ lives in an inline namespace named after the CPU
// capability its translation unit is compiled for. The per-capability CPU objects are
// built with -mavx2 / -mavx512f; without distinct names the linker could keep an AVX2
// copy of an inline helper and hand it to the portable code path (an ODR violation that
// crashes on an older CPU). ATen's Vectorized does the same (Note [CPU_CAPABILITY namespace]).
#if defined(CPU_CAPABILITY)
#define DETLOSS_CAPABILITY_NS CPU_CAPABILITY
#else
#define DETLOSS_CAPABILITY_NS portable
#endif
