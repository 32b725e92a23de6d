"""Build of detloss_cuda: one extension, detloss_cuda._C, holding every op.

Switches (environment):
  USE_CUDA=0            build the CPU kernels only
  FORCE_CUDA=1          fail unless the CUDA kernels are compiled (CI does this; no GPU needed)
  CUDA_HOME             the toolkit; detected from nvcc when unset
  TORCH_CUDA_ARCH_LIST  e.g. "9.0" or "8.0;9.0"; torch's default when unset
  MAX_JOBS              parallel compile jobs (ninja)
  DETLOSS_PTXAS_VERBOSE=1  print ptxas register/spill usage for every kernel

CUDA sources are compiled whenever the installed torch is a CUDA build and nvcc is found;
a GPU is not needed. Install with:  pip install --no-build-isolation -e .
"""
import os
import platform
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

try:
    import torch
except ImportError:  # build isolation, or torch not installed yet
    sys.exit(
        "detloss_cuda builds against the torch you run it with: install torch first, then "
        "`pip install --no-build-isolation .` (see README.md)."
    )


def env_flag(name, default=None):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The toolkit folder. torch guesses it as nvcc's grandparent folder, which is wrong when
    nvcc on PATH is a wrapper or link outside the toolkit (then -lcudart fails to link)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a shell wrapper: `exec /path/to/toolkit/bin/nvcc "$@"`
            with open(nvcc, "r", errors="ignore") as f:
                m = re.search(r"(/\S+)/bin/nvcc", f.read(4096))
            if m:
                candidates.append(m.group(1))
        except OSError:
            pass
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if is_toolkit(c):
            return os.path.realpath(c)
    return None


def decide_cuda():
    use = env_flag("USE_CUDA", default=True)
    force = env_flag("FORCE_CUDA", default=False)
    if not use:
        if force:
            sys.exit("USE_CUDA=0 and FORCE_CUDA=1 contradict each other")
        return None
    home = find_cuda_home()
    if torch.version.cuda is None:
        if force:
            sys.exit(f"FORCE_CUDA=1 but the installed torch {torch.__version__} is a CPU build")
        return None
    if home is None:
        if force:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the folder "
                     "holding bin/nvcc and include/cuda_runtime.h")
        print("detloss_cuda: nvcc not found, building the CPU kernels only", file=sys.stderr)
        return None
    return home


CUDA_HOME = decide_cuda()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # before torch.utils.cpp_extension reads it

from torch.utils import cpp_extension  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if CUDA_HOME:
    cpp_extension.CUDA_HOME = CUDA_HOME


def read_version():
    with open(os.path.join(ROOT, "detloss_cuda", "version.py")) as f:
        return re.search(r'__version__\s*=\s*"([^"]+)"', f.read()).group(1)


VERSION = read_version()

# Vectorised CPU loops, one object per capability (see csrc/cpu/dispatch.h). The flags
# follow ATen's for the same capabilities.
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
CAPABILITIES = [("DEFAULT", [])]
if IS_X86:
    CAPABILITIES += [
        ("AVX2", ["-mavx2", "-mfma", "-mf16c"]),
        ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"]),
    ]


def rel(*p):
    return os.path.join("csrc", *p)


def listdir(sub, suffix):
    d = os.path.join(ROOT, "csrc", sub)
    return sorted(rel(sub, f) for f in os.listdir(d) if f.endswith(suffix))


def cuda_archs_string():
    """The architectures nvcc will target, as torch computes them (from TORCH_CUDA_ARCH_LIST
    or the visible GPUs)."""
    try:
        codes = []
        for f in cpp_extension._get_cuda_arch_flags():
            m = re.search(r"arch=compute_\w+,code=\[?([\w,]+)\]?", f)
            if m:
                codes += [c for c in m.group(1).split(",") if c not in codes]
        return ",".join(codes)
    except Exception:  # private helper: fall back to the request
        return os.environ.get("TORCH_CUDA_ARCH_LIST", "")


def make_extension():
    sources = ["csrc/module.cpp"] + listdir("ops", ".cpp") + listdir("cpu", ".cpp")
    macros = [
        ("DETLOSS_VERSION", f'"{VERSION}"'),
        ("DETLOSS_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    macros += [(f"DETLOSS_HAVE_{name}", "1") for name, _ in CAPABILITIES if name != "DEFAULT"]
    cxx = ["-O3", "-Wno-unknown-pragmas"]  # ATen's vec headers carry CUDA pragmas
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        # at::parallel_for is inline: with torch's OpenMP backend it only runs in parallel if
        # this code is compiled with -fopenmp (else serially, silently). libgomp.so.1 then
        # resolves to the copy torch already loaded: one OpenMP runtime, torch's thread count.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(name="detloss_cuda._C", sources=sources, define_macros=macros,
                  include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=link)
    if CUDA_HOME:
        sources += listdir("cuda", ".cu")
        macros += [("DETLOSS_WITH_CUDA", "1"), ("DETLOSS_CUDA_ARCHS", f'"{cuda_archs_string()}"')]
        nvcc = ["-O3", "-lineinfo"]
        if env_flag("DETLOSS_PTXAS_VERBOSE", False):
            nvcc.append("-Xptxas=-v")
        ext = CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
    ext.capability_sources = [
        (rel("cpu", "capability", f"kernels_{name}.cpp"), name, flags)
        for name, flags in CAPABILITIES
    ]
    return ext


class Build(BuildExtension):
    """BuildExtension that also compiles the per-capability CPU objects, each with its own
    -m flags and CPU_CAPABILITY, and links them after the portable objects (so the linker
    keeps the portable copy of any inline function the two share)."""

    def build_extension(self, ext):
        caps = getattr(ext, "capability_sources", [])
        if caps:
            args = ext.extra_compile_args
            cxx = list(args["cxx"] if isinstance(args, dict) else args)
            objects = []
            for src, name, flags in caps:
                post = cxx + flags + [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"]
                objects += self.compiler.compile(
                    [src], output_dir=self.build_temp, macros=ext.define_macros,
                    include_dirs=ext.include_dirs, debug=self.debug,
                    extra_postargs={"cxx": post, "nvcc": []}, depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


setup(
    version=VERSION,
    packages=find_packages(include=["detloss_cuda", "detloss_cuda.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": Build.with_options(use_ninja=True)},
)
