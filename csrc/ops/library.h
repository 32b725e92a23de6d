// Where the ops are registered: torch.ops.detloss, the CUDA drivers at the CUDA dispatch key.
// The SIMT emulator's test build (csrc/emu, tests/emulated_cuda.py) compiles the same ops and
// .cu files with DETLOSS_OPS_NS=detloss_emu and DETLOSS_CUDA_KEY=CPU: there the CUDA drivers
// serve CPU tensors, as torch.ops.detloss_emu, beside (never instead of) the real extension.
#pragma once

#ifndef DETLOSS_OPS_NS
#define DETLOSS_OPS_NS detloss
#endif
#ifndef DETLOSS_CUDA_KEY
#define DETLOSS_CUDA_KEY CUDA
#endif

#define DETLOSS_STRINGIFY_(x) #x
#define DETLOSS_STRINGIFY(x) DETLOSS_STRINGIFY_(x)
// the dispatcher name of an op of this build: "detloss::<name>"
#define DETLOSS_OP(name) DETLOSS_STRINGIFY(DETLOSS_OPS_NS) "::" name
