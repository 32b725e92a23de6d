"""YOLOv5 (the pip ``yolov5`` package, 7.x) losses on detloss_cuda's fused kernels.

    import detloss_cuda.integrations.yolov5 as dl
    dl.patch()                  # before or after ComputeLoss is built
    dl.unpatch()                # the originals, the very same objects
    with dl.patched(): ...

What is routed (``yolov5.utils.loss``):

* ``ComputeLoss``'s two ``nn.BCEWithLogitsLoss`` criteria (``cls_pw`` / ``obj_pw`` as
  ``pos_weight``; the objectness one reads every grid cell of every level): the fused BCE.
  A patched ``ComputeLoss.__call__`` swaps them (once) for :class:`FusedBCEWithLogitsLoss`,
  a subclass of ``nn.BCEWithLogitsLoss`` with the same ``pos_weight`` buffer and
  ``reduction``, which runs torch's own forward again once the patch is undone;
* ``FocalLoss.forward`` and ``QFocalLoss.forward`` (``fl_gamma > 0``): the fused focal / QFL
  with the wrapped BCE's ``pos_weight`` and YOLOv5's always-on ``alpha_t``. YOLOv5 smooths
  labels (``smooth_BCE``) by building its targets with ``cp``/``cn``; those targets reach
  the fused kernels unchanged, so its focusing factors see the smoothed targets, as there;
* ``bbox_iou`` (the CIoU of ``ComputeLoss`` and ``yolov5.utils.metrics``): the fused box kernel,
  same signature and ``[..., 1]`` shape. YOLOv5 takes ``atan(w / h)``, the kernel
  ``atan(w / (h + eps))``: equal to float32 rounding for boxes a detector predicts.

Values and gradients equal YOLOv5's up to float32 rounding (``tests/test_integrations.py``:
a ``yolov5s.yaml`` training step). Installing ``yolov5`` beside this project's test
requirements: its metadata pins ``huggingface-hub<0.25`` (transformers 5 needs >= 1.0) and its
code imports ``pkg_resources`` (``setuptools<81``): ``pip install --no-deps yolov5==7.0.14``
and then what its model and loss code import (``.[yolov5]``: pandas, seaborn, gitpython,
``setuptools<81``; README, integrations).
"""
import functools

import torch

from .. import functional as DF
from ._patching import Switch, load_library, ours, wrap_bbox_iou

KNOWN = "yolov5 7.x (the pip package; tested with 7.0.14)"


def _load():
    return load_library("yolov5", ("yolov5.utils.loss", "yolov5.utils.metrics"), KNOWN)


def _plain(bce):
    return isinstance(bce, torch.nn.BCEWithLogitsLoss) and bce.weight is None


class FusedBCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """``nn.BCEWithLogitsLoss`` (``weight=None``) on the fused kernel while the patch is on;
    torch's forward once it is undone, or for inputs the fused op does not take."""

    def forward(self, input, target):
        pw = self.pos_weight
        if (not _switch.is_patched or not ours(input, target) or target.requires_grad
                or input.shape != target.shape or input.dtype != target.dtype
                or (pw is not None and not ours(pw))):
            return super().forward(input, target)
        return DF.binary_cross_entropy_with_logits(input, target, pos_weight=pw,
                                                   reduction=self.reduction)


def _fuse(self):
    """Swap ComputeLoss's plain BCE criteria for fused ones (built before or after patch())."""
    for name in ("BCEcls", "BCEobj"):
        crit = getattr(self, name, None)
        if type(crit) is torch.nn.BCEWithLogitsLoss and crit.weight is None:
            setattr(self, name, FusedBCEWithLogitsLoss(pos_weight=crit.pos_weight,
                                                       reduction=crit.reduction))


def _wrap_compute_loss_call(orig):
    @functools.wraps(orig)
    def __call__(self, p, targets):
        _fuse(self)
        return orig(self, p, targets)
    return __call__


def _wrap_focal(orig, kind):
    """YOLOv5's FocalLoss / QFocalLoss: BCE (with the wrapped criterion's pos_weight) times
    alpha_t times (1 - p_t)^gamma or |t - p|^gamma."""
    @functools.wraps(orig)
    def forward(self, pred, true):
        bce, alpha = self.loss_fcn, self.alpha
        pw = getattr(bce, "pos_weight", None)
        if (not _plain(bce) or not ours(pred, true) or true.requires_grad
                or pred.shape != true.shape or pred.dtype != true.dtype
                or (pw is not None and not ours(pw)) or not isinstance(alpha, (int, float))
                or not 0 <= alpha <= 1 or self.reduction not in ("none", "mean", "sum")):
            return orig(self, pred, true)
        return DF._cls_loss(pred, true, kind, pos_weight=pw, alpha=float(alpha),
                            gamma=float(self.gamma), reduction=self.reduction)
    return forward


def _fused_bbox_iou(*args, **kwargs):
    return DF.bbox_iou(*args, **kwargs)  # DF read at call time (tests spy on it)


def _apply(ps):
    L, M = ps.mods["yolov5.utils.loss"], ps.mods["yolov5.utils.metrics"]
    compute = ps.original(L, "ComputeLoss")
    plan = [(compute, "__call__", _wrap_compute_loss_call(ps.original(compute, "__call__"))),
            (L, "bbox_iou", wrap_bbox_iou(ps.original(L, "bbox_iou"), _fused_bbox_iou)),
            (M, "bbox_iou", wrap_bbox_iou(ps.original(M, "bbox_iou"), _fused_bbox_iou))]
    for cls, kind in (("FocalLoss", "focal"), ("QFocalLoss", "qfl")):
        owner = ps.original(L, cls)
        plan.append((owner, "forward", _wrap_focal(ps.original(owner, "forward"), kind)))
    for owner, name, new in plan:
        ps.replace(owner, name, new)


_switch = Switch("yolov5", _load, _apply)
patch = _switch.patch
unpatch = _switch.unpatch
patched = _switch.patched


def is_patched():
    return _switch.is_patched


__all__ = ["patch", "unpatch", "patched", "is_patched", "FusedBCEWithLogitsLoss"]
