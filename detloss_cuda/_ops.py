"""torch.library glue for the native ops: their fake (meta) kernels.

The extension registers the schemas, the CPU and CUDA kernels, and (in C++, for speed: the
Python route cost ~70 us per call) the autograd formulas, whose backward is its own op, and
the autocast policy (csrc/ops/<family>.cpp). This module adds shape inference, which
``torch.compile`` and ``torch.library.opcheck`` need; the extension names it
(``set_python_module``), so torch imports it whenever a fake kernel is asked for.
"""
import torch

from . import _C  # noqa: F401  (registers the schemas and the CPU/CUDA kernels)

ops = torch.ops.detloss


# ---------------------------------------------------------------------------- cls family
@torch.library.register_fake("detloss::cls_loss")
def _cls_loss_fake(input, target, weight, pos_weight, label, kind, alpha, gamma, reduction):
    torch._check(
        target.shape == input.shape,
        lambda: f"detloss.cls_loss: target of shape {tuple(target.shape)} must have the "
        f"shape of input {tuple(input.shape)}",
    )
    if reduction == "none":
        return input.new_empty(input.shape)
    return input.new_empty(())


@torch.library.register_fake("detloss::cls_backward")
def _cls_backward_fake(grad, input, target, weight, pos_weight, label, kind, alpha, gamma,
                       reduction):
    return input.new_empty(input.shape)
