// Arguments and per-capability entry points of the CPU classification loops
// (implemented in cls_vec.h, compiled once per capability in csrc/cpu/capability/).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../math/cls.h"
#include "../ops/operand.h"
#include "dispatch.h"

namespace detloss {
namespace cpu {

template <typename T>
struct ClsLoopArgs {
  using opmath = at::opmath_type<T>;
  const T* x = nullptr;
  const T* t = nullptr;
  Operand<T> weight, pos_weight;
  Operand<uint8_t> label;
  Operand<T> grad;        // backward only
  opmath grad_scale = 1;  // backward: 1/numel for 'mean', else 1
  T* out = nullptr;       // forward: per-element loss ('none') or null (reduce);
                          // backward: the input gradient
  math::ClsKind kind = math::ClsKind::kBCE;
  math::ClsConfig<opmath> cfg{};
};

// forward: writes out[begin:end) if out is set, and returns the sum of the losses in
// [begin, end) in a fixed order. backward: writes out[begin:end).
#define DETLOSS_CLS_CPU_DECLS(T)                                                            \
  at::opmath_type<T> cls_forward_range(const ClsLoopArgs<T>& a, int64_t begin, int64_t end); \
  void cls_backward_range(const ClsLoopArgs<T>& a, int64_t begin, int64_t end)

DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(float))
DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(double))
DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(c10::Half))
DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(c10::BFloat16))

}  // namespace cpu
}  // namespace detloss
