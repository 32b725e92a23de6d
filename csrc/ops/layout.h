// Layout constants that the fake kernels (detloss_cuda/_ops.py) read from the extension, in a
// header of their own so that csrc/module.cpp exports them without the op headers.
#pragma once

#include <cstdint>

namespace detloss {

// The CPU integral reads a bin-major pred (csrc/ops/dfl.h) in tiles on the stack: up to this
// many bins a row.
constexpr int64_t kDflBinMajorMaxBins = 32;

}  // namespace detloss
