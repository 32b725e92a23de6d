// csrc/cuda/cls_kernel.cu, compiled by the host compiler for the SIMT emulator (simt.h).
#include "simt.h"

#include "../cuda/cls_kernel.cu"
