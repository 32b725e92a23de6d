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

Same signatures, values and gradients (float32 rounding apart); inputs the fused ops do not
take (MPS tensors, integer boxes, targets that require grad for the focal loss) go to
torchvision's own code.
"""
import functools

from .. import functional as DF
from ._patching import Switch, load_library, ours

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


def _wrap_focal(orig):
    @functools.wraps(orig)
    def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
        if not ours(inputs, targets) or targets.requires_grad:
            return orig(inputs, targets, alpha, gamma, reduction)
        # torchvision applies alpha_t when alpha >= 0; ours disables it with None
        return DF.sigmoid_focal_loss(inputs, targets, alpha=alpha if alpha >= 0 else None,
                                     gamma=gamma, reduction=reduction)
    return sigmoid_focal_loss


def _wrap_box(orig, ours_fn):
    @functools.wraps(orig)
    def box_loss(boxes1, boxes2, reduction="none", eps=1e-7):
        if not ours(boxes1, boxes2) or boxes1.dtype != boxes2.dtype:
            return orig(boxes1, boxes2, reduction, eps)
        return ours_fn(boxes1, boxes2, reduction=reduction, eps=eps)
    return box_loss


# (function name, the modules that hold a reference to it, wrapper)
_TARGETS = [
    ("sigmoid_focal_loss", ("ops", "focal_loss", "retinanet", "fcos"), _wrap_focal),
    ("generalized_box_iou_loss", ("ops", "giou_loss", "utils", "fcos"),
     lambda o: _wrap_box(o, DF.generalized_box_iou_loss)),
    ("distance_box_iou_loss", ("ops", "diou_loss", "utils"),
     lambda o: _wrap_box(o, DF.distance_box_iou_loss)),
    ("complete_box_iou_loss", ("ops", "ciou_loss", "utils"),
     lambda o: _wrap_box(o, DF.complete_box_iou_loss)),
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
