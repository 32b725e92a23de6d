"""The CUDA kernels on the CPU: the test build of the SIMT emulator (csrc/emu/simt.h).

The very .cu files of csrc/cuda, compiled by the host compiler with the emulator's header, and
the op files of csrc/ops, make a second extension registered as ``torch.ops.detloss_emu``:
the same schemas, validation and autograd as ``torch.ops.detloss``, whose kernels are the CUDA
drivers, serving CPU tensors (stream and device guard: no-ops). It is for the tests only: the
README's main command never builds it; the first test that needs it does, once, in
``build/emu-<python>-torch<version>/`` (ninja keeps the objects: later runs only load it).
No CUDA toolkit or header is needed (the emulator brings stand-ins for the three c10/cuda
headers the drivers include), so a CPU-only torch builds it too.

    from emulated_cuda import emu_ops, emulated
    ops = emu_ops()                  # torch.ops.detloss_emu, built on first use
    with emulated():                 # detloss_cuda.functional & co. on the CUDA kernels
        loss = DF.sigmoid_focal_loss(x, t)
"""
import contextlib
import os
import re
import sys
import threading

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

KERNEL_FILES = ["cls_kernel", "box_kernel", "dfl_kernel", "assign_kernel", "mask_kernel"]  # csrc/cuda/*.cu
OP_FILES = ["common", "cls", "box", "dfl", "assign", "mask", "autograd", "autocast"]  # csrc/ops/*.cpp
FLAGS = [
    "-O2", "-g0",
    "-DDETLOSS_OPS_NS=detloss_emu", "-DDETLOSS_CUDA_KEY=CPU",
    # its own copy of every inline function and static: never bound to the real extension's
    "-fvisibility=hidden", "-fvisibility-inlines-hidden",
    "-fdata-sections",  # each __shared__ static in a section of its own (csrc/emu/shared.ld)
    "-ffp-contract=off",  # no fused multiply-add the GPU code does not ask for
    "-fno-strict-aliasing",  # the kernels' vector loads reinterpret element pointers
    "-Wno-unknown-pragmas",  # #pragma unroll
]

# DETLOSS_EMU_UCONTEXT=1: fibers switched by swapcontext, the path of architectures other than
# x86-64, into a build folder of its own (a check of that path on x86-64)
UCONTEXT = os.environ.get("DETLOSS_EMU_UCONTEXT") == "1"
if UCONTEXT:
    FLAGS = FLAGS + ["-DDETLOSS_EMU_UCONTEXT"]

_lock = threading.Lock()
_built = None


def build_dir():
    tag = re.sub(r"[^\w.+-]", "_", f"{sys.implementation.cache_tag}-torch{torch.__version__}")
    return os.path.join(ROOT, "build", f"emu-{'ucontext-' if UCONTEXT else ''}{tag}")


def sources():
    return ([os.path.join(CSRC, "emu", f) for f in
             ("simt.cpp", "fiber.cpp", "warp.cpp", "fault.cpp", "module.cpp", "selftest.cpp")] +
            [os.path.join(CSRC, "emu", f"{k}.cpp") for k in KERNEL_FILES] +
            [os.path.join(CSRC, "ops", f"{o}.cpp") for o in OP_FILES])


def emu_ops(verbose=False):
    """torch.ops.detloss_emu, building the emulated extension first if needed."""
    global _built
    with _lock:
        if _built is None:
            import logging

            import detloss_cuda  # noqa: F401  (the fake kernels' module; the real ops beside)

            # its import logs "No CUDA runtime is found" without a GPU: nothing here needs one
            logging.getLogger("torch.utils.cpp_extension").addFilter(
                lambda r: not str(r.msg).startswith("No CUDA runtime is found"))
            from torch.utils import cpp_extension

            d = build_dir()
            os.makedirs(d, exist_ok=True)
            cpp_extension.load(
                name="detloss_emu", sources=sources(), build_directory=d,
                extra_include_paths=[os.path.join(CSRC, "emu", "include"), CSRC],
                extra_cflags=FLAGS,
                extra_ldflags=["-Wl,-T," + os.path.join(CSRC, "emu", "shared.ld")],
                is_python_module=False, verbose=verbose)
            # the fake kernels, with the layouts of the CUDA drivers (they serve CPU tensors here)
            from detloss_cuda import _ops

            _ops.register_fakes("detloss_emu", driver=lambda t: "cuda")
            _built = torch.ops.detloss_emu
    return _built


@contextlib.contextmanager
def emulated():
    """Routes detloss_cuda's functions and modules (which call ``detloss_cuda._ops.ops``) to
    the emulated CUDA kernels for the duration of the block."""
    from detloss_cuda import _ops

    ops = emu_ops()
    saved = _ops.ops
    _ops.ops = ops
    try:
        yield ops
    finally:
        _ops.ops = saved


def kernels():
    """[(tag, signature, launches)] of every kernel instantiation the build holds."""
    tags, names, launches = emu_ops().emu_kernels()
    return list(zip(tags, names, launches))
