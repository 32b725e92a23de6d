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
  const T* t = nullptr;  // dense targets (null in the index form)
  Operand<T> weight, pos_weight;
  Operand<uint8_t> label;
  T* out = nullptr;       // per-element loss ('none') or null (reduced)
  T* grad = nullptr;      // forward_grad: d(loss)/d(input) at upstream 1
  opmath grad_scale = 1;  // 1 / (the 'mean' divisor), else 1
  // index form: labels[i / classes] is the class of element i's anchor
  const int64_t* labels = nullptr;
  const T* score = nullptr;  // per anchor, or null (1)
  int64_t classes = 1;
  int64_t ignore_index = -100;
  bool class_major = false;  // memory order [..., C, A]: inner = A anchors per class row
  int64_t inner = 1;
  const opmath* code = nullptr;  // class-major: per anchor its class, -1 background, -2 ignored
  math::ClsKind kind = math::ClsKind::kBCE;
  math::ClsConfig<opmath> cfg{};
};

// Both write out[begin:end) if out is set and return the sum of the losses in [begin, end)
// in a fixed order; forward_grad also writes grad[begin:end).
#define DETLOSS_CLS_CPU_DECLS(T)                                                            \
  at::opmath_type<T> cls_forward_range(const ClsLoopArgs<T>& a, int64_t begin, int64_t end); \
  at::opmath_type<T> cls_forward_grad_range(const ClsLoopArgs<T>& a, int64_t begin, int64_t end)

DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(float))
DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(double))
DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(c10::Half))
DETLOSS_CPU_DECLARE(DETLOSS_CLS_CPU_DECLS(c10::BFloat16))

}  // namespace cpu
}  // namespace detloss
