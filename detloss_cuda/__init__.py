"""detloss_cuda: fused CUDA and CPU kernels for the losses of dense object detectors.

    import detloss_cuda.functional as DF
    loss = DF.sigmoid_focal_loss(logits, targets, reduction="sum")

``functional`` holds the loss functions, ``nn`` the module drop-ins, ``reference`` the
pure-PyTorch oracle they are tested against; the ops themselves are ``torch.ops.detloss.*``.
"""
import os

import torch

from . import _C, _ops  # noqa: F401  (loads and registers the ops)
from . import functional, nn, reference
from .version import __version__

__all__ = ["functional", "nn", "reference", "build_info", "__version__"]

if os.environ.get("DETLOSS_PATCH"):  # a worker of a patched launcher (integrations/__init__.py)
    from .integrations import patch_from_env

    patch_from_env()


def build_info():
    """How the loaded extension was built, plus what it runs on.

    Keys: ``version``, ``with_cuda`` (CUDA kernels compiled), ``cuda_version`` (toolkit they
    were compiled with), ``cuda_archs`` (e.g. ``'sm_90'``), ``torch_version`` (built against),
    ``torch_runtime_version`` (imported now), ``cpu_capabilities`` (compiled) and
    ``cpu_capability`` (in use), ``cuda_available`` (a usable GPU now), ``build_note`` (the
    line the build printed: what it built, why, and how to change it).
    """
    info = dict(_C.build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = bool(info["with_cuda"] and torch.cuda.is_available())
    return info
