// csrc/cuda/mask_kernel.cu, compiled by the host compiler for the SIMT emulator (simt.h).
#include "simt.h"

#include "../cuda/mask_kernel.cu"
