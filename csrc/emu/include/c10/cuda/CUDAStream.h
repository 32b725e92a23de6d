// The SIMT emulator's stand-in for c10/cuda/CUDAStream.h: one stream, the host thread, which
// runs each launch to its end before the next call.
#pragma once

#include <c10/core/Device.h>

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
