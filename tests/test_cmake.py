"""CMakeLists.txt builds the same csrc/ against LibTorch into a library that
torch.ops.load_library loads, with the same results as the Python extension."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import detloss_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r"""
    import sys, torch
    torch.ops.load_library(sys.argv[1])
    x = torch.linspace(-8, 8, 997, dtype=torch.float64).reshape(-1, 1).repeat(1, 3)
    t = torch.linspace(0, 1, 997 * 3, dtype=torch.float64).reshape(997, 3)
    out = {}
    for kind in ("bce", "focal", "qfl", "vfl"):
        alpha = 0.75 if kind == "vfl" else 0.25
        for dtype in (torch.float32, torch.float64):
            a = (x.to(dtype), t.to(dtype), None, None, None, kind, alpha, 1.5, "none")
            out[f"{kind}-{dtype}-loss"] = torch.ops.detloss.cls_loss(*a)
            out[f"{kind}-{dtype}-grad"] = torch.ops.detloss.cls_backward(
                torch.ones(997, 3, dtype=dtype), *a)
    out["has_cuda_kernel"] = torch._C._dispatch_has_kernel_for_dispatch_key(
        "detloss::cls_loss", "CUDA")
    torch.save(out, sys.argv[2])
""")


def cmake_args(build_dir, with_cuda):
    args = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DWITH_CUDA={'ON' if with_cuda else 'OFF'}"]
    if torch.version.cuda:  # the CUDA wheel's TorchConfig looks for the toolkit either way
        home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={home}", f"-DCMAKE_CUDA_COMPILER={home}/bin/nvcc"]
        import nvidia  # the wheel's nvrtc: the toolkit here has none
        nvrtc = os.path.join(os.path.dirname(nvidia.__path__[0]), "nvidia", "cu13", "lib",
                             "libnvrtc.so.13")
        if os.path.exists(nvrtc):
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc}")
    return args


@pytest.mark.slow
def test_cmake_library_matches_extension(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    with_cuda = detloss_cuda.build_info()["with_cuda"]  # build what the extension has
    build = str(tmp_path / "build")
    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # no GPU to detect the arch from
    env.setdefault("CUDA_HOME", "/usr/local/cuda")
    subprocess.run(cmake_args(build, with_cuda), check=True, env=env, capture_output=True)
    r = subprocess.run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    lib = os.path.join(build, "libdetloss_ops.so")
    assert os.path.exists(lib)

    # a fresh interpreter that never imports detloss_cuda (both would register detloss::*)
    out_file = str(tmp_path / "out.pt")
    r = subprocess.run([sys.executable, "-c", SCRIPT, lib, out_file], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    got = torch.load(out_file)
    assert got.pop("has_cuda_kernel") == with_cuda

    x = torch.linspace(-8, 8, 997, dtype=torch.float64).reshape(-1, 1).repeat(1, 3)
    t = torch.linspace(0, 1, 997 * 3, dtype=torch.float64).reshape(997, 3)
    for kind in ("bce", "focal", "qfl", "vfl"):
        alpha = 0.75 if kind == "vfl" else 0.25
        for dtype in (torch.float32, torch.float64):
            a = (x.to(dtype), t.to(dtype), None, None, None, kind, alpha, 1.5, "none")
            # the same sources and flags: the same bits
            assert torch.equal(got[f"{kind}-{dtype}-loss"], torch.ops.detloss.cls_loss(*a))
            g = torch.ops.detloss.cls_backward(torch.ones(997, 3, dtype=dtype), *a)
            assert torch.equal(got[f"{kind}-{dtype}-grad"], g)
