// A read-only operand that broadcasts against the elements of a loss (weight, pos_weight,
// label, an upstream gradient). Plain data, shared by host, CPU kernels and CUDA kernels.
//
// Any operand whose expanded view is "broadcast dims, then one contiguous block of dims,
// then broadcast dims" is read in place: element i of the loss reads ptr[(i / inner) % mid].
// That covers a per-class weight [C] (inner 1, mid C), a per-anchor weight [N, 1]
// (inner C, mid N), a scalar and a full tensor, with no copy; anything else is made
// contiguous once on the host (see describe_operand in common.h).
#pragma once

#include <cstdint>

#include "../math/config.h"

namespace detloss {

enum class OperandMode : int32_t {
  kAbsent = 0,     // not given: the kernel uses the neutral value
  kScalar = 1,     // one value for every element
  kFull = 2,       // same layout as the loss elements: ptr[i]
  kBroadcast = 3,  // ptr[(i / inner) % mid]
};

template <typename T>
struct Operand {
  const T* ptr = nullptr;
  int64_t inner = 1;
  int64_t mid = 1;
  OperandMode mode = OperandMode::kAbsent;
};

namespace math {
inline namespace DETLOSS_CAPABILITY_NS {

template <typename T>
DETLOSS_HD int64_t operand_index(const Operand<T>& o, int64_t i) {
  switch (o.mode) {
    case OperandMode::kFull: return i;
    case OperandMode::kBroadcast: return (i / o.inner) % o.mid;
    default: return 0;
  }
}

// Value of the operand for loss element i, or `absent` when it was not given.
template <typename R, typename T>
DETLOSS_HD R operand_at(const Operand<T>& o, int64_t i, R absent) {
  return o.mode == OperandMode::kAbsent ? absent : static_cast<R>(o.ptr[operand_index(o, i)]);
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
