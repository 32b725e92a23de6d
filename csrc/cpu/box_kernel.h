// Arguments and per-capability entry points of the CPU box loops (implemented in
// box_vec.h, compiled once per capability in csrc/cpu/capability/).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../math/box.h"
#include "../ops/operand.h"
#include "dispatch.h"

namespace detloss {
namespace cpu {

template <typename T>
struct BoxLoopArgs {
  using opmath = at::opmath_type<T>;
  Operand<T> pred, target;  // rows of math::box_row(kind)
  Operand<T> weight;
  opmath grad_scale = 1;    // forward_grad: 1/numel for 'mean', else 1
  T* out = nullptr;         // per-pair loss ('none') or null (reduced)
  T* grad_pred = nullptr;   // forward_grad: d(loss)/d(pred) at upstream 1, [n, row], or null
  T* grad_target = nullptr;
  math::BoxKind kind = math::BoxKind::kIoU;
  bool xywh = false;
  opmath eps = 0;
  opmath floor = 0;
};

template <typename T>
struct BoxMatrixLoopArgs {
  using opmath = at::opmath_type<T>;
  const T* boxes1 = nullptr;  // [B, N, row]
  const T* boxes2 = nullptr;  // [B, M, row]
  T* out = nullptr;           // [B, N, M]
  int64_t n = 0, m = 0;
  math::BoxKind kind = math::BoxKind::kIoU;
  bool xywh = false;
  opmath eps = 0;
  opmath floor = 0;
};

// forward: writes out[begin:end) if set and returns the sum of the losses in fixed order;
// forward_grad: also the gradient rows [begin:end) asked for. matrix: rows [begin, end) of B·N.
#define DETLOSS_BOX_CPU_DECLS(T)                                                                 \
  at::opmath_type<T> box_forward_range(const BoxLoopArgs<T>& a, int64_t begin, int64_t end);      \
  at::opmath_type<T> box_forward_grad_range(const BoxLoopArgs<T>& a, int64_t begin, int64_t end); \
  void box_matrix_rows(const BoxMatrixLoopArgs<T>& a, int64_t begin, int64_t end)

DETLOSS_CPU_DECLARE(DETLOSS_BOX_CPU_DECLS(float))
DETLOSS_CPU_DECLARE(DETLOSS_BOX_CPU_DECLS(double))
DETLOSS_CPU_DECLARE(DETLOSS_BOX_CPU_DECLS(c10::Half))
DETLOSS_CPU_DECLARE(DETLOSS_BOX_CPU_DECLS(c10::BFloat16))

}  // namespace cpu
}  // namespace detloss
