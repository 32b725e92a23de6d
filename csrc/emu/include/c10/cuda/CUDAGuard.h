// The SIMT emulator's stand-in for c10/cuda/CUDAGuard.h (csrc/emu/include comes first on the
// emulated build's include path): the emulated CUDA drivers run on CPU tensors, where a device
// guard has nothing to do. No CUDA header is needed, so a CPU-only torch builds the emulator.
#pragma once

#include <c10/core/Device.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};
}  // namespace cuda
}  // namespace c10
