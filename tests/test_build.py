"""The build: what detloss_cuda._C says about itself, and that it is true."""
import os
import re

import torch

import detloss_cuda

OPS = ["cls_loss", "cls_backward"]


def test_build_info_keys_and_types():
    info = detloss_cuda.build_info()
    for key in ("version", "with_cuda", "cuda_archs", "torch_version", "cuda_version",
                "cpu_capabilities", "cpu_capability", "torch_runtime_version", "cuda_available"):
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
    assert s.startswith("detloss::cls_loss(Tensor input, Tensor target, Tensor? weight, "
                        "Tensor? pos_weight, Tensor? label, str kind, float alpha, float gamma, "
                        "str reduction) -> Tensor"), s
    s = str(torch.ops.detloss.cls_backward.default._schema)
    assert s.startswith("detloss::cls_backward(Tensor grad, Tensor input"), s
