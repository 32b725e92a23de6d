// csrc/cuda/dfl_kernel.cu, compiled by the host compiler for the SIMT emulator (simt.h).
#include "simt.h"

#include "../cuda/dfl_kernel.cu"
