"""Build of detloss_cuda: one extension, detloss_cuda._C, holding every op.

What gets built (the rule; the build prints one line saying which case applied):
  1. USE_CUDA=0, a CPU build of torch, or no CUDA toolkit: the CPU kernels only.
  2. TORCH_CUDA_ARCH_LIST set: the CUDA kernels for those architectures (a GPU is not needed).
  3. a GPU visible: the CUDA kernels for the visible GPU(s), as torch's own default.
  4. FORCE_CUDA=1, no GPU visible: the CUDA kernels for a portable list, PORTABLE_ARCHS
     below (those this nvcc supports; PTX of the newest for later GPUs).
  5. otherwise (no GPU visible, nothing asked): the CPU kernels only, as torchvision and
     mmcv do; the line says how to get the CUDA kernels.
The CPU kernels are always built: DEFAULT, plus AVX2 and AVX512 on x86-64, chosen at run time.

Switches (environment):
  USE_CUDA=0            the CPU kernels only
  FORCE_CUDA=1          fail unless the CUDA kernels are compiled (without a GPU: case 4)
  TORCH_CUDA_ARCH_LIST  e.g. "9.0", "8.0;9.0+PTX", "Hopper"; checked before anything compiles
  CUDA_HOME             the toolkit; found from nvcc when unset
  MAX_JOBS              parallel compile jobs (ninja)
  DETLOSS_PTXAS_VERBOSE=1  print ptxas register/spill usage for every kernel
  DETLOSS_DEBUG_INFO=1  keep the host compiler's debug info (-g; off by default: half the time)

Objects live in build/<python>-torch<version>/, which survives between installs: a second
`pip install --no-build-isolation -e .` with nothing changed recompiles nothing (ninja
decides, headers included), it only links; switching between a CPU-only and a CUDA build
recompiles only the .cu files and module.cpp.

Install with:  pip install --no-build-isolation -e .
"""
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# Case 4: SASS for Turing (T4), Ampere (sm_80 code also runs on 8.6 and 8.9), Hopper,
# Blackwell datacenter (also 10.3) and Blackwell consumer, PTX of the newest for later GPUs.
# nvcc 13 dropped everything below 7.5; an arch this nvcc lacks is left out.
PORTABLE_ARCHS = ["7.5", "8.0", "9.0", "10.0", "12.0"]

ARCH_FORMS = ("compute capabilities separated by ';' or spaces, each X.Y with an optional "
              "'a' and an optional '+PTX' (e.g. '9.0', '8.0;9.0+PTX', '9.0a'), or a "
              "generation name (Turing, Ampere, Ada, Hopper, Blackwell)")


def env_flag(env, name, default=None):
    v = env.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home(env):
    """The toolkit folder. torch guesses it as nvcc's grandparent folder, which is wrong when
    nvcc on PATH is a wrapper or link outside the toolkit (then -lcudart fails to link)."""
    candidates = [env.get("CUDA_HOME"), env.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc", path=env.get("PATH"))
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


def nvcc_archs(cuda_home):
    """Compute capabilities this nvcc compiles for, e.g. ['7.5', '8.0', ..., '12.1']."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = [f"{int(m) // 10}.{int(m) % 10}" for m in re.findall(r"compute_(\d+)", out)]
    return found or None


class BuildError(Exception):
    """A build request that cannot be met; the message says what to change."""


def plan_build(env, torch_cuda, gpu_archs, cuda_home, supported):
    """Decides what to build (the rule in this file's docstring). Pure, so it is tested
    (tests/test_build.py) without compiling anything.

    env: the environment; torch_cuda: torch.version.cuda (None for a CPU build);
    gpu_archs: compute capabilities of the visible GPUs (e.g. ['9.0']); cuda_home: the
    toolkit or None; supported: the archs this nvcc compiles for (None: unknown).
    Returns (arch_list, why): arch_list None for a CPU-only build, else the value for
    TORCH_CUDA_ARCH_LIST ('' means torch's default: the visible GPUs)."""
    use = env_flag(env, "USE_CUDA", default=True)
    force = env_flag(env, "FORCE_CUDA", default=False)
    requested = (env.get("TORCH_CUDA_ARCH_LIST") or "").strip()
    if not use:
        if force:
            raise BuildError("USE_CUDA=0 and FORCE_CUDA=1 contradict each other: unset one")
        return None, "USE_CUDA=0"
    if torch_cuda is None:
        if force:
            raise BuildError("FORCE_CUDA=1, but the installed torch is a CPU build: install a "
                             "CUDA build of torch, or unset FORCE_CUDA")
        return None, "the installed torch is a CPU build"
    if cuda_home is None:
        if force or requested:
            raise BuildError(("FORCE_CUDA=1" if force else f"TORCH_CUDA_ARCH_LIST={requested!r}")
                             + " asks for the CUDA kernels, but no CUDA toolkit was found: set "
                             "CUDA_HOME to the folder holding bin/nvcc and "
                             "include/cuda_runtime.h")
        return None, "no CUDA toolkit (nvcc) found"
    if requested:
        if requested == "native" and not gpu_archs:
            raise BuildError("TORCH_CUDA_ARCH_LIST='native' builds for the visible GPU, but "
                             f"none is visible; give the architectures instead: {ARCH_FORMS}")
        return requested, f"TORCH_CUDA_ARCH_LIST={requested}"
    if gpu_archs:
        return "", "the visible GPU(s)"
    if force:
        archs = [a for a in PORTABLE_ARCHS if supported is None or a in supported]
        if not archs:
            raise BuildError(f"FORCE_CUDA=1 with no GPU visible builds for {PORTABLE_ARCHS}, "
                             f"but this nvcc supports none of them ({supported}); set "
                             "TORCH_CUDA_ARCH_LIST")
        return ";".join(archs[:-1] + [archs[-1] + "+PTX"]), \
            "FORCE_CUDA=1 with no GPU visible: the portable list"
    return None, "no GPU is visible"


def check_arch_list(value, flags_of, supported):
    """The gencode flags for TORCH_CUDA_ARCH_LIST=value, computed by torch (flags_of), or a
    BuildError naming the variable and the accepted forms; also refuses an architecture
    this nvcc cannot compile for (else nvcc fails minutes later)."""
    try:
        flags = flags_of()
    except (ValueError, IndexError) as e:
        raise BuildError(f"TORCH_CUDA_ARCH_LIST={value!r} is not an architecture list torch "
                         f"accepts ({e}); give {ARCH_FORMS}") from None
    if not flags:
        raise BuildError(f"TORCH_CUDA_ARCH_LIST={value!r} names no architecture; give "
                         f"{ARCH_FORMS}")
    if supported:
        nums = sorted({m for f in flags for m in re.findall(r"compute_(\d+)", f)}, key=int)
        bad = [f"{int(n) // 10}.{int(n) % 10}" for n in nums
               if f"{int(n) // 10}.{int(n) % 10}" not in supported]
        if bad:
            raise BuildError(f"TORCH_CUDA_ARCH_LIST={value!r} asks for {', '.join(bad)}, which "
                             f"this nvcc cannot compile for; it supports {';'.join(supported)}")
    return flags


def archs_of(flags):
    """'-gencode=arch=compute_90,code=sm_90' ... -> 'sm_90,compute_90' (what build_info shows)."""
    codes = []
    for f in flags:
        m = re.search(r"arch=compute_\w+,code=\[?([\w,]+)\]?", f)
        if m:
            codes += [c for c in m.group(1).split(",") if c not in codes]
    return ",".join(codes)


def read_version():
    with open(os.path.join(ROOT, "detloss_cuda", "version.py")) as f:
        return re.search(r'__version__\s*=\s*"([^"]+)"', f.read()).group(1)


def rel(*p):
    return os.path.join("csrc", *p)


def listdir(sub, suffix):
    d = os.path.join(ROOT, "csrc", sub)
    return sorted(rel(sub, f) for f in os.listdir(d) if f.endswith(suffix))


def c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_if_changed(path, text):
    """Keeps the file's mtime when nothing changed, so ninja rebuilds nothing."""
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main():
    try:
        import torch
    except ImportError:  # build isolation, or torch not installed yet
        sys.exit("detloss_cuda builds against the torch you run it with: install torch first, "
                 "then `pip install --no-build-isolation .` (see README.md).")

    env = dict(os.environ)
    home = find_cuda_home(env) if torch.version.cuda is not None else None
    supported = nvcc_archs(home) if home else None
    gpus = []
    if torch.version.cuda is not None and env_flag(env, "USE_CUDA", True):
        gpus = [f"{a}.{b}" for a, b in (torch.cuda.get_device_capability(i)
                                        for i in range(torch.cuda.device_count()))]
    try:
        arch_list, why = plan_build(env, torch.version.cuda, gpus, home, supported)
    except BuildError as e:
        sys.exit(f"detloss_cuda: {e}")
    with_cuda = arch_list is not None

    if with_cuda:
        os.environ["CUDA_HOME"] = home  # before torch.utils.cpp_extension reads it
        if arch_list:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    # its import logs "No CUDA runtime is found, using CUDA_HOME=..." without a GPU: the line
    # below says what is built, and that toolkit is the one it names
    import logging

    logging.getLogger("torch.utils.cpp_extension").addFilter(
        lambda r: not str(r.msg).startswith("No CUDA runtime is found"))
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # Vectorised CPU loops, one object per capability (see csrc/cpu/dispatch.h). The flags
    # follow ATen's for the same capabilities.
    capabilities = [("DEFAULT", [])]
    if platform.machine().lower() in ("x86_64", "amd64"):
        capabilities += [
            ("AVX2", ["-mavx2", "-mfma", "-mf16c"]),
            ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                        "-mf16c"]),
        ]
    caps = ",".join(n for n, _ in capabilities)

    archs = ""
    if with_cuda:
        cpp_extension.CUDA_HOME = home
        try:
            archs = archs_of(check_arch_list(arch_list or "(visible GPUs)",
                                             cpp_extension._get_cuda_arch_flags, supported))
        except BuildError as e:
            sys.exit(f"detloss_cuda: {e}")
        cuda_version = re.search(r"release (\d+\.\d+)", subprocess.run(
            [os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
            text=True).stdout or "")
        what = (f"CUDA kernels for {archs} (CUDA {cuda_version.group(1) if cuda_version else '?'}"
                f" at {home}; {why}) and CPU kernels {caps}. Change: TORCH_CUDA_ARCH_LIST=..., "
                "or USE_CUDA=0 for the CPU kernels only")
    else:
        what = (f"CPU kernels only ({caps}): {why}. Change: "
                + ("unset USE_CUDA" if why == "USE_CUDA=0" else
                   "FORCE_CUDA=1 (a portable list of architectures) or TORCH_CUDA_ARCH_LIST=9.0 "
                   "(one) builds the CUDA kernels too" if "GPU" in why else
                   "a CUDA build of torch and a CUDA toolkit build the CUDA kernels too"))
    print(f"detloss_cuda build: {what}", file=sys.stderr, flush=True)

    version = read_version()
    # One folder for CPU-only and CUDA builds: the C++ objects get the same command line in
    # both (see below), so switching recompiles only the .cu files and module.cpp.
    tag = f"{sys.implementation.cache_tag}-torch{torch.__version__}"
    build_dir = os.path.join(ROOT, "build", re.sub(r"[^\w.+-]", "_", tag))
    # What only module.cpp reads goes in a generated header (rewritten only when it changes),
    # not in -D flags: a new version or arch list then recompiles one file, not all.
    write_if_changed(os.path.join(build_dir, "generated", "detloss_build_config.h"), "".join([
        "// Generated by setup.py: how this build was made (csrc/module.cpp reports it).\n",
        "#pragma once\n",
        f"#define DETLOSS_VERSION {c_string(version)}\n",
        f"#define DETLOSS_TORCH_VERSION {c_string(torch.__version__)}\n",
        f"#define DETLOSS_CUDA_ARCHS {c_string(archs)}\n",
        f"#define DETLOSS_BUILD_NOTE {c_string(what)}\n",
        "#define DETLOSS_WITH_CUDA 1\n" if with_cuda else "",
    ]))

    # Sources whose rounding must be torch's, operation by operation (the assigner replicates
    # ultralytics' bits): compiled with contraction into fused multiply-adds off, explicitly
    # (GCC contracts by default where the target has FMA: aarch64; x86-64 builds without -mfma)
    exact_sources = [rel("cpu", "assign_kernel.cpp")]
    exact_flags = ["-ffp-contract=off"]
    sources = ["csrc/module.cpp"] + listdir("ops", ".cpp") + [
        s for s in listdir("cpu", ".cpp") if s not in exact_sources]
    macros = [(f"DETLOSS_HAVE_{name}", "1") for name, _ in capabilities if name != "DEFAULT"]
    cxx = ["-O3", "-Wno-unknown-pragmas"]  # ATen's vec headers carry CUDA pragmas
    if not env_flag(env, "DETLOSS_DEBUG_INFO", False):
        # Python's CFLAGS carry -g: debug info for torch's templates doubled the compile time
        # of the op files (63 s -> 34 s for ops/box.cpp here) and the object sizes
        cxx.append("-g0")
    link = []
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        # at::parallel_for is inline: with torch's OpenMP backend it only runs in parallel if
        # this code is compiled with -fopenmp (else serially, silently). libgomp.so.1 then
        # resolves to the copy torch already loaded: one OpenMP runtime, torch's thread count.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(name="detloss_cuda._C", sources=sources, define_macros=macros,
                  include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(build_dir, "generated")],
                  extra_link_args=link)
    if with_cuda:
        sources += listdir("cuda", ".cu")
        nvcc = ["-O3", "-lineinfo"]
        if env_flag(env, "DETLOSS_PTXAS_VERBOSE", False):
            nvcc.append("-Xptxas=-v")
        ext = CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
        if home:  # the include path a CUDA build adds, in the same place (nothing reads it)
            ext.include_dirs.append(os.path.join(home, "include"))
    ext.capability_sources = [(rel("cpu", "capability", f"kernels_{name}.cpp"), name, flags)
                              for name, flags in capabilities]
    ext.exact_sources = exact_sources
    ext.exact_flags = exact_flags

    class Build(BuildExtension):
        """BuildExtension with a build folder that outlives the install (pip's editable
        install hands it a fresh temporary one each time), always run, so that ninja, which
        knows every header each object read, decides what to recompile; it also compiles
        the per-capability CPU objects, each with its own -m flags and CPU_CAPABILITY, and
        links them after the portable objects (so the linker keeps the portable copy of any
        inline function the two share); and the exact sources, with contraction off."""

        def run(self):
            self.build_temp = build_dir
            self.force = True  # setuptools would compare sources only, not the headers
            super().run()

        def build_extension(self, ext):
            args = ext.extra_compile_args
            cxx_args = list(args["cxx"] if isinstance(args, dict) else args)
            objects = []
            for src, name, flags in getattr(ext, "capability_sources", []):
                post = cxx_args + flags + [f"-DCPU_CAPABILITY={name}", f"-DCPU_CAPABILITY_{name}"]
                # one folder (so one build.ninja and ninja log) per capability
                objects += self.compiler.compile(
                    [src], output_dir=os.path.join(self.build_temp, f"cap-{name}"),
                    macros=ext.define_macros, include_dirs=ext.include_dirs, debug=self.debug,
                    extra_postargs={"cxx": post, "nvcc": []}, depends=ext.depends)
            objects += self.compiler.compile(
                ext.exact_sources, output_dir=os.path.join(self.build_temp, "exact"),
                macros=ext.define_macros, include_dirs=ext.include_dirs, debug=self.debug,
                extra_postargs={"cxx": cxx_args + ext.exact_flags, "nvcc": []},
                depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

    setup(
        version=version,
        # the extension links against this torch's C++ ABI, which changes between releases:
        # the built package needs this very release (a local label such as +cu130 matches)
        install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        packages=find_packages(include=["detloss_cuda", "detloss_cuda.*"]),
        ext_modules=[ext],
        cmdclass={"build_ext": Build.with_options(use_ninja=True)},
    )


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import plan_build
    main()
