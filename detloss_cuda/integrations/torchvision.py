"""torchvision detection losses (RetinaNet, FCOS) on detloss_cuda's fused kernels.

    import detloss_cuda.integrations.torchvision as dl
    dl.patch()                  # torchvision.ops.* and the references the heads hold
    dl.unpatch()                # the originals, the very same objects
    with dl.patched(): ...

Replaced, everywhere torchvision keeps a reference to them (``torchvision.ops``, the
``torchvision.ops.*_loss`` modules, ``models.detection.retinanet``, ``.fcos`` and
``._utils``, whose ``_box_loss`` serves RetinaNet's ``giou``/``diou``/``ciou`` box losses):

* ``sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction='none')``
* ``generalized_box_iou_loss``, ``distance_box_iou_loss``, ``complete_box_iou_loss``
  ``(boxes1, boxes2, reduction='none', eps=1e-7)``

Indistinguishable from torchvision's except in speed and memory: the same signatures,
values and gradients (float32 rounding apart), output dtypes (the box losses compute fp16,
bf16 and integer boxes in float32 and return float32, as torchvision does), errors (every
call the fused ops would treat differently goes to torchvision's own code: an invalid
``reduction`` or ``alpha``, a negative ``gamma``, the ``'mean'`` of an empty focal loss,
which is NaN there, mixed dtypes, boxes of two shapes, CIoU with another ``eps`` than
the default, MPS tensors, targets that require grad), and TorchScript:
``torch.jit.script`` of a patched function, or of a RetinaNet / FCOS model, compiles
torchvision's original function (scripted code does not run the fused ops).

One difference (README, integration notes): with ``gamma=0`` torchvision's focal loss is
computed from its own BCE, so ``focal <= F.binary_cross_entropy_with_logits`` holds bit for
bit there; ours is the stable formula (within 2e-7 of float64), which can exceed torch's BCE
by torch's own rounding, relative to |x| (1e-5 of the loss at x = -4, t = 0).
"""
import functools

import torch

from .. import functional as DF
from ._patching import Switch, is_number, load_library, ours

KNOWN = "torchvision 0.17 to 0.29 (tested with 0.29.1)"


# the short names _TARGETS uses for the modules that hold references to the functions
_MODULES = {"ops": "torchvision.ops", "focal_loss": "torchvision.ops.focal_loss",
            "giou_loss": "torchvision.ops.giou_loss", "diou_loss": "torchvision.ops.diou_loss",
            "ciou_loss": "torchvision.ops.ciou_loss",
            "retinanet": "torchvision.models.detection.retinanet",
            "fcos": "torchvision.models.detection.fcos",
            "utils": "torchvision.models.detection._utils"}


def _load():
    ps = load_library("torchvision", tuple(_MODULES.values()), KNOWN)
    ps.mods = {short: ps.mods[full] for short, full in _MODULES.items()}
    return ps


_REDUCTIONS = ("none", "mean", "sum")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _scriptable_as(wrapper, orig):
    """torch.jit.script of the wrapper (directly, or of a RetinaNet / FCOS model whose code
    calls it) compiles torchvision's own function: TorchScript takes `__original_fn` from
    objects marked as `__script_if_tracing_wrapper`, with the original's globals (compiling
    the wrapper's source would resolve torchvision's names in this module)."""
    setattr(wrapper, "__script_if_tracing_wrapper", True)
    setattr(wrapper, "__original_fn", orig)
    return wrapper


def _wrap_focal(orig):
    @functools.wraps(orig)
    def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
        # torchvision's own code for everything the fused op would treat differently, so that
        # values, dtypes and errors are torchvision's: its alpha check and message, its
        # reduction error, mean of an empty tensor (NaN; ours is 0), negative gamma, mixed
        # dtypes or shapes (its BCE's errors), MPS, targets that require grad
        if (not ours(inputs, targets) or targets.requires_grad or inputs.dtype != targets.dtype
                or inputs.shape != targets.shape or reduction not in _REDUCTIONS
                or not is_number(alpha) or not (0 <= alpha <= 1 or alpha == -1)
                or not is_number(gamma) or gamma < 0
                or (reduction == "mean" and inputs.numel() == 0)):
            return orig(inputs, targets, alpha, gamma, reduction)
        # torchvision applies alpha_t when alpha >= 0 (alpha = -1: none); ours takes None
        return DF.sigmoid_focal_loss(inputs, targets, alpha=alpha if alpha >= 0 else None,
                                     gamma=gamma, reduction=reduction)
    return _scriptable_as(sigmoid_focal_loss, orig)


def _wrap_box(orig, ours_fn, any_eps=True):
    @functools.wraps(orig)
    def box_loss(boxes1, boxes2, reduction="none", eps=1e-7):
        if (not isinstance(boxes1, torch.Tensor) or not isinstance(boxes2, torch.Tensor)
                or reduction not in _REDUCTIONS or not is_number(eps) or eps < 0
                or (not any_eps and eps != 1e-7)):
            return orig(boxes1, boxes2, reduction, eps)
        # torchvision computes in float32 at least (_upcast_non_float: fp16, bf16 and integer
        # boxes become float32) and returns that dtype; float32 with float64 is its error
        b1 = boxes1 if boxes1.dtype in (torch.float32, torch.float64) else boxes1.float()
        b2 = boxes2 if boxes2.dtype in (torch.float32, torch.float64) else boxes2.float()
        # torchvision takes boxes of one shape [..., 4] (its masked intersection does not
        # broadcast: its IndexError for others)
        if (not ours(b1, b2) or b1.dtype != b2.dtype or b1.dim() == 0 or b1.shape[-1] != 4
                or b1.shape != b2.shape):
            return orig(boxes1, boxes2, reduction, eps)
        return ours_fn(b1, b2, reduction=reduction, eps=eps)
    return _scriptable_as(box_loss, orig)


# (function name, the modules that hold a reference to it, wrapper)
_TARGETS = [
    ("sigmoid_focal_loss", ("ops", "focal_loss", "retinanet", "fcos"), _wrap_focal),
    ("generalized_box_iou_loss", ("ops", "giou_loss", "utils", "fcos"),
     lambda o: _wrap_box(o, DF.generalized_box_iou_loss)),
    ("distance_box_iou_loss", ("ops", "diou_loss", "utils"),
     lambda o: _wrap_box(o, DF.distance_box_iou_loss)),
    ("complete_box_iou_loss", ("ops", "ciou_loss", "utils"),
     # CIoU's aspect term: atan(w / h) there, atan(w / (h + eps)) here, the same to float32
     # rounding at the default eps: another eps goes to torchvision's code
     lambda o: _wrap_box(o, DF.complete_box_iou_loss, any_eps=False)),
]


def _apply(ps):
    plan = []
    for name, holders, wrap in _TARGETS:
        # one wrapper per function, installed wherever a reference to the original lives
        orig = ps.original(ps.mods["ops"], name, f"torchvision.ops.{name}")
        wrapped = wrap(orig)
        for h in holders:
            found = ps.original(ps.mods[h], name, f"{ps.mods[h].__name__}.{name}")
            plan.append((ps.mods[h], name, wrapped if found is orig else wrap(found)))
    for owner, name, new in plan:
        ps.replace(owner, name, new)


_switch = Switch("torchvision", _load, _apply)
patch = _switch.patch
unpatch = _switch.unpatch
patched = _switch.patched


def is_patched():
    return _switch.is_patched


__all__ = ["patch", "unpatch", "patched", "is_patched"]
