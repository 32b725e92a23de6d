// Arguments and per-capability entry points of the CPU distribution loops (implemented in
// dfl_vec.h, compiled once per capability in csrc/cpu/capability/).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../math/dfl.h"
#include "../ops/operand.h"
#include "dispatch.h"

namespace detloss {
namespace cpu {

template <typename T>
struct DflLoopArgs {
  using opmath = at::opmath_type<T>;
  const T* pred = nullptr;         // [rows, bins]
  const opmath* target = nullptr;  // [rows] (loss only), or [rows, 2] where split
  bool split = false;              // (left bin, right bin's weight) targets: D-FINE's FGL
  Operand<T> weight;
  Operand<T> grad;                 // backward only
  opmath grad_scale = 1;           // backward: 1/rows for 'mean', else 1
  T* out = nullptr;                // forward: per row ('none') or null (reduce);
                                   // backward: [rows, bins]
  opmath* stats_out = nullptr;     // forward: (max, sum of exp(z - max)) [rows, 2] (loss)
                                   // or (lse, mean) [rows, 2] (integral)
  T* grad_out = nullptr;           // forward (loss): also d(loss)/d(pred) for an upstream
                                   // gradient of 1, written while the rows are in cache
  const opmath* stats = nullptr;   // backward: what the forward wrote there
  int32_t bins = 0;
  bool integral = false;           // the distribution integral instead of the loss
  int64_t bin_stride = 0;          // integral only. 0: rows of contiguous bins; else the
                                   // bin-major layout (csrc/ops/dfl.h): bin j of row t at
                                   // pred[t + j·bin_stride], its gradient at out[t + j·bin_stride]
};

// forward: writes out[begin:end) if set and the rows' stats, returns the sum of the row
// losses in fixed order; backward: writes the gradient rows [begin, end) from the stats.
#define DETLOSS_DFL_CPU_DECLS(T)                                                            \
  at::opmath_type<T> dfl_forward_rows(const DflLoopArgs<T>& a, int64_t begin, int64_t end); \
  void dfl_backward_rows(const DflLoopArgs<T>& a, int64_t begin, int64_t end)

DETLOSS_CPU_DECLARE(DETLOSS_DFL_CPU_DECLS(float))
DETLOSS_CPU_DECLARE(DETLOSS_DFL_CPU_DECLS(double))
DETLOSS_CPU_DECLARE(DETLOSS_DFL_CPU_DECLS(c10::Half))
DETLOSS_CPU_DECLARE(DETLOSS_DFL_CPU_DECLS(c10::BFloat16))

}  // namespace cpu
}  // namespace detloss
