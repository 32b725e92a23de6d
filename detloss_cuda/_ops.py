"""torch.library glue for the native ops: fake (meta) kernels, autograd and autocast.

The schemas and the CPU/CUDA kernels are registered by the extension (csrc/ops, csrc/cpu,
csrc/cuda); this module adds what makes them first-class PyTorch ops: shape inference for
``torch.compile`` and ``torch.library.opcheck``, the analytic backward as its own op, and
an autocast policy.
"""
import torch

from . import _C  # noqa: F401  (registers the schemas and the CPU/CUDA kernels)

ops = torch.ops.detloss

_NO_GRAD_ARGS = {"target": 1, "weight": 2, "pos_weight": 3}


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


def _cls_setup_context(ctx, inputs, output):
    input, target, weight, pos_weight, label, kind, alpha, gamma, reduction = inputs
    for name, i in _NO_GRAD_ARGS.items():
        t = inputs[i]
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"detloss: {name} requires grad, but these losses are differentiated with "
                f"respect to input only; pass {name}.detach() (a detached {name} is what "
                "ultralytics, mmdet and torchvision use)"
            )
    ctx.save_for_backward(input, target, weight, pos_weight, label)
    ctx.args = (kind, alpha, gamma, reduction)


def _cls_backward(ctx, grad):
    input, target, weight, pos_weight, label = ctx.saved_tensors
    grad_input = ops.cls_backward(grad, input, target, weight, pos_weight, label, *ctx.args)
    return grad_input, None, None, None, None, None, None, None, None


def _no_double_backward(name):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"detloss: double backward through {name} is not supported (the backward op "
            "is analytic and has no derivative of its own)"
        )

    return backward


def _no_context(ctx, inputs, output):
    pass


torch.library.register_autograd("detloss::cls_loss", _cls_backward,
                                setup_context=_cls_setup_context)
torch.library.register_autograd("detloss::cls_backward", _no_double_backward("cls_loss"),
                                setup_context=_no_context)

# Under autocast, torch runs its own BCE-with-logits in float32; so do we, so that swapping
# the import keeps the numbers (and a sum of fp16 losses cannot overflow to inf).
for _device in ("cuda", "cpu"):
    torch.library.register_autocast("detloss::cls_loss", _device, torch.float32)
