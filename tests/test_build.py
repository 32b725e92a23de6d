"""The build: what detloss_cuda._C says about itself, and that it is true."""
import os
import re

import pytest
import torch

import detloss_cuda

OPS = ["cls_loss", "cls_backward"]


def test_build_info_keys_and_types():
    info = detloss_cuda.build_info()
    for key in ("version", "with_cuda", "cuda_archs", "torch_version", "cuda_version",
                "cpu_capabilities", "cpu_capability", "torch_runtime_version", "cuda_available",
                "build_note"):
        assert key in info, key
    assert info["version"] == detloss_cuda.__version__
    assert isinstance(info["with_cuda"], bool)
    # built against the torch it runs with (an extension built for another torch fails to load)
    assert info["torch_version"] == torch.__version__ == info["torch_runtime_version"]
    caps = info["cpu_capabilities"].split(",")
    assert caps[0] == "DEFAULT" and info["cpu_capability"] in caps


def test_with_cuda_is_true_to_the_dispatcher():
    info = detloss_cuda.build_info()
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"detloss::{op}", "CPU")
        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(f"detloss::{op}", "CUDA")
        assert has_cuda == info["with_cuda"], (op, info)
    if info["with_cuda"]:
        assert re.fullmatch(r"\d+\.\d+", info["cuda_version"]), info
        assert re.fullmatch(r"(sm|compute)_\d+a?(,(sm|compute)_\d+a?)*", info["cuda_archs"]), info
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == ""


def test_forced_cuda_build_compiled_the_kernels():
    """CI builds with FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 on a machine without a GPU:
    the CUDA kernels must be in the binary even though they cannot run here."""
    info = detloss_cuda.build_info()
    if os.environ.get("FORCE_CUDA") == "1":
        assert info["with_cuda"], info
        requested = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        for arch in re.findall(r"(\d+)\.(\d+)", requested):
            assert f"sm_{arch[0]}{arch[1]}" in info["cuda_archs"], (requested, info)
    else:
        assert isinstance(info["with_cuda"], bool)  # nothing was demanded of this build


def test_schemas():
    s = str(torch.ops.detloss.cls_loss.default._schema)
    # the first nine arguments are positional in every release; the rest have defaults
    assert s == ("detloss::cls_loss(Tensor input, Tensor target, Tensor? weight, "
                 "Tensor? pos_weight, Tensor? label, str kind, float alpha, float gamma, "
                 "str reduction, Tensor? score=None, float label_smoothing=0., "
                 "int ignore_index=-100) -> Tensor"), s
    s = str(torch.ops.detloss.cls_loss_with_grad.default._schema)
    assert s.endswith("-> (Tensor loss, Tensor grad)"), s
    s = str(torch.ops.detloss.cls_backward.default._schema)
    assert s.startswith("detloss::cls_backward(Tensor grad, Tensor input"), s


# ------------------------------------------------------------------ what setup.py decides to build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_module():
    """setup.py imported as a module (it builds only when run as __main__)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("detloss_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _setup_module()
NVCC13 = ["7.5", "8.0", "8.6", "8.7", "8.8", "8.9", "9.0", "10.0", "11.0", "10.3", "12.0", "12.1"]
NVCC124 = ["5.0", "5.2", "6.0", "6.1", "7.0", "7.5", "8.0", "8.6", "8.9", "9.0"]


def plan(env=None, torch_cuda="13.0", gpus=(), home="/usr/local/cuda", supported=NVCC13):
    return S.plan_build(dict(env or {}), torch_cuda, list(gpus), home, supported)


def test_plan_no_gpu_nothing_asked_builds_the_cpu_kernels_only():
    """Case (a) of the README's rule: this machine, a new user's first command."""
    archs, why = plan()
    assert archs is None and "no GPU is visible" in why


def test_plan_visible_gpu_gets_torch_default():
    assert plan(gpus=["9.0"]) == ("", "the visible GPU(s)")


def test_plan_arch_list_builds_cuda_without_a_gpu():
    assert plan({"TORCH_CUDA_ARCH_LIST": "9.0"})[0] == "9.0"
    assert plan({"TORCH_CUDA_ARCH_LIST": "8.0;9.0", "FORCE_CUDA": "1"}, gpus=["8.6"])[0] == "8.0;9.0"


def test_plan_force_cuda_without_gpu_uses_the_portable_list_nvcc_supports():
    assert plan({"FORCE_CUDA": "1"})[0] == "7.5;8.0;9.0;10.0;12.0+PTX"
    assert plan({"FORCE_CUDA": "1"}, supported=NVCC124)[0] == "7.5;8.0;9.0+PTX"
    assert plan({"FORCE_CUDA": "1"}, supported=None)[0] == "7.5;8.0;9.0;10.0;12.0+PTX"
    with pytest.raises(S.BuildError, match="supports none"):
        plan({"FORCE_CUDA": "1"}, supported=["5.0", "6.0"])


@pytest.mark.parametrize("env", [{}, {"TORCH_CUDA_ARCH_LIST": "9.0"}])
def test_plan_cpu_torch_builds_the_cpu_kernels(env):
    """Case (c): a CPU build of torch."""
    assert plan(env, torch_cuda=None, gpus=[], home=None) == (None, "the installed torch is a CPU build")


def test_plan_without_nvcc_builds_the_cpu_kernels():
    """Case (c): a CUDA torch but no toolkit."""
    assert plan(home=None, gpus=["9.0"]) == (None, "no CUDA toolkit (nvcc) found")


@pytest.mark.parametrize("env, kw, match", [
    ({"FORCE_CUDA": "1"}, {"torch_cuda": None, "home": None}, "CPU build"),
    ({"FORCE_CUDA": "1"}, {"home": None}, "no CUDA toolkit"),
    ({"TORCH_CUDA_ARCH_LIST": "9.0"}, {"home": None}, "TORCH_CUDA_ARCH_LIST='9.0' asks"),
    ({"USE_CUDA": "0", "FORCE_CUDA": "1"}, {}, "contradict"),
    ({"TORCH_CUDA_ARCH_LIST": "native"}, {}, "none is visible"),
])
def test_plan_impossible_requests_are_clear_errors(env, kw, match):
    with pytest.raises(S.BuildError, match=match):
        plan(env, **kw)


def test_plan_use_cuda_0_wins_over_a_gpu():
    assert plan({"USE_CUDA": "0"}, gpus=["9.0"]) == (None, "USE_CUDA=0")


@pytest.mark.parametrize("value", ["9.5", "sm_90", "9,0", "90", "Hoper", ";"])
def test_malformed_arch_list_names_the_variable_and_the_forms(monkeypatch, value):
    """Checked with torch's own parser (the one the build uses), before anything compiles."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    with pytest.raises(S.BuildError) as e:
        S.check_arch_list(value, cpp_extension._get_cuda_arch_flags, NVCC13)
    msg = str(e.value)
    assert f"TORCH_CUDA_ARCH_LIST={value!r}" in msg and "'8.0;9.0+PTX'" in msg, msg


@pytest.mark.parametrize("value, archs", [("9.0", "sm_90"), ("8.0 9.0+PTX", "sm_80,sm_90,compute_90"),
                                          ("Hopper", "sm_90,compute_90"), ("9.0a", "sm_90a")])
def test_valid_arch_lists(monkeypatch, value, archs):
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    flags = S.check_arch_list(value, cpp_extension._get_cuda_arch_flags, NVCC13)
    assert set(S.archs_of(flags).split(",")) == set(archs.split(","))


def test_arch_this_nvcc_cannot_compile_is_refused_early(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "6.0;9.0")
    with pytest.raises(S.BuildError, match="6.0, which this nvcc cannot compile for"):
        S.check_arch_list("6.0;9.0", cpp_extension._get_cuda_arch_flags, NVCC13)


def test_setup_py_reports_a_bad_arch_list_without_a_traceback():
    """The real entry point, as pip runs it: exits at once with the message, compiles nothing."""
    import subprocess
    import sys

    if torch.version.cuda is None or S.find_cuda_home(dict(os.environ)) is None:
        pytest.skip("needs a CUDA build of torch and a CUDA toolkit (the arch list is then read)")
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="9.5", FORCE_CUDA="1")
    r = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "detloss_cuda: TORCH_CUDA_ARCH_LIST='9.5' is not an architecture list" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_build_note_says_what_was_built():
    info = detloss_cuda.build_info()
    note = info["build_note"]
    assert note.startswith("CUDA kernels for" if info["with_cuda"] else "CPU kernels only"), note
    assert info["cpu_capabilities"] in note and "Change:" in note, note
    if info["with_cuda"]:
        assert info["cuda_archs"] in note, note


def test_version_metadata_agrees_with_the_build():
    from importlib.metadata import version

    assert version("detloss_cuda") == detloss_cuda.__version__ == detloss_cuda.build_info()["version"]


def test_the_assigner_is_compiled_without_contraction():
    """The CPU assigner replicates ultralytics' rounding operation by operation: its driver is
    compiled with -ffp-contract=off (setup.py's exact sources; GCC contracts a*b+c into one
    rounding by default wherever the target has FMA, as aarch64 does), and only there."""
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tag = re.sub(r"[^\w.+-]", "_", f"{sys.implementation.cache_tag}-torch{torch.__version__}")
    build = os.path.join(root, "build", tag)
    with open(os.path.join(build, "exact", "build.ninja")) as f:
        exact = f.read()
    assert "-ffp-contract=off" in exact and "csrc/cpu/assign_kernel.cpp" in exact
    with open(os.path.join(build, "build.ninja")) as f:
        main = f.read()
    assert "csrc/cpu/assign_kernel.cpp" not in main and "-ffp-contract=off" not in main
