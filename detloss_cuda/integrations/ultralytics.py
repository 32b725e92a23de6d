"""ultralytics YOLO (v8 / 11 detection losses) on detloss_cuda's fused kernels.

    import detloss_cuda.integrations.ultralytics as dl
    dl.patch()                  # before or after the trainer builds its criterion
    ...
    dl.unpatch()                # the originals, the very same objects
    with dl.patched(): ...      # or for a block

What is routed (wrapping ultralytics' own classes and functions; each wrapper hands inputs
the fused ops do not take — MPS tensors, integer boxes, targets that require grad — to the
original):

* ``v8DetectionLoss``'s classification BCE (``self.bce``, reduction ``'none'``, no weights):
  our fused BCE; ultralytics still sums it and divides by the target-score sum on the device
  (no host synchronisation), and still applies its class weights;
* ``v8DetectionLoss.bbox_decode``: softmax over the bins · ``proj`` becomes
  ``distribution_integral`` (``proj`` must be ``arange(reg_max)``, as ultralytics builds it;
  checked once per criterion);
* ``bbox_iou`` as ``BboxLoss`` (CIoU of the foreground pairs) and ``TaskAlignedAssigner``
  (CIoU of every candidate pair) call it: our box kernels, same signature and shapes;
* ``DFLoss``: ``distribution_focal_loss``, same clamp of the target and mean over sides;
* ``VarifocalLoss`` and ``FocalLoss`` (not used by the default detection loss; the RT-DETR
  and custom criteria use them): our VFL and focal kernels. VFL's ``label`` is read as a
  0/1 mask (ultralytics passes one-hot labels).

Numbers: the same loss items and gradients as unpatched ultralytics up to float32 rounding
and one documented difference: in xyxy mode ultralytics adds ``eps`` (1e-7) to both heights
inside ``bbox_iou``; the fused kernels do not (a relative change of order eps/height).
``tests/test_integrations.py`` compares a YOLOv8n training step end to end.
"""
import functools
import weakref

import torch

from .. import functional as DF
from ._patching import Switch, load_library, ours

KNOWN = "ultralytics 8.3 and 8.4 (tested with 8.4.190)"


def _load():
    return load_library("ultralytics", ("ultralytics.utils.loss", "ultralytics.utils.tal"), KNOWN)


class FusedBCEWithLogits(torch.nn.Module):
    """``nn.BCEWithLogitsLoss(reduction='none')`` on the fused kernel."""

    def forward(self, input, target):
        if not ours(input, target) or target.requires_grad:
            return torch.nn.functional.binary_cross_entropy_with_logits(input, target,
                                                                        reduction="none")
        return DF.binary_cross_entropy_with_logits(input, target, reduction="none")


def _plain_bce(bce):
    return (type(bce) is torch.nn.BCEWithLogitsLoss and bce.reduction == "none"
            and bce.weight is None and bce.pos_weight is None)


def _wrap_assigned(orig):
    @functools.wraps(orig)
    def get_assigned_targets_and_loss(self, *args, **kwargs):
        bce = getattr(self, "bce", None)
        if not _plain_bce(bce):
            return orig(self, *args, **kwargs)
        self.bce = FusedBCEWithLogits()  # for this call only: the criterion is left as it was
        try:
            return orig(self, *args, **kwargs)
        finally:
            self.bce = bce
    return get_assigned_targets_and_loss


def _wrap_bbox_decode(orig, dist2bbox):
    proj_ok = weakref.WeakKeyDictionary()  # criterion -> its proj is arange(reg_max)

    @functools.wraps(orig)
    def bbox_decode(self, anchor_points, pred_dist):
        if not getattr(self, "use_dfl", False) or not ours(pred_dist) or pred_dist.dim() != 3:
            return orig(self, anchor_points, pred_dist)
        b, a, c = pred_dist.shape
        ok = proj_ok.get(self)
        if ok is None:  # one host read per criterion
            proj = getattr(self, "proj", None)
            ok = (isinstance(proj, torch.Tensor) and c % 4 == 0 and proj.numel() == c // 4 and
                  torch.equal(proj.detach().cpu().double(), torch.arange(c // 4).double()))
            proj_ok[self] = ok
        if not ok:
            return orig(self, anchor_points, pred_dist)
        # softmax over each side's bins · (0, 1, ..., R - 1): the expected distance
        dist = DF.distribution_integral(pred_dist.view(b, a, 4, c // 4))
        return dist2bbox(dist, anchor_points, xywh=False)
    return bbox_decode


def _wrap_bbox_iou(orig):
    @functools.wraps(orig)
    def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):  # noqa: N803
        if not ours(box1, box2):
            return orig(box1, box2, xywh, GIoU, DIoU, CIoU, eps)
        if box1.dtype != box2.dtype:  # ultralytics mixes them under AMP; promote as torch would
            dt = torch.promote_types(box1.dtype, box2.dtype)
            box1, box2 = box1.to(dt), box2.to(dt)
        return DF.bbox_iou(box1, box2, xywh=xywh, GIoU=GIoU, DIoU=DIoU, CIoU=CIoU, eps=eps)
    return bbox_iou


def _wrap_dfl_call(orig):
    @functools.wraps(orig)
    def __call__(self, pred_dist, target):
        reg_max = getattr(self, "reg_max", None)
        if (not ours(pred_dist, target) or target.requires_grad or pred_dist.dim() != 2
                or pred_dist.shape[-1] != reg_max or target.numel() != pred_dist.shape[0]):
            return orig(self, pred_dist, target)
        target = target.clamp_(0, reg_max - 1 - 0.01)  # ultralytics clamps in place; so do we
        loss = DF.distribution_focal_loss(pred_dist, target.reshape(-1), reduction="none")
        return loss.view(target.shape).mean(-1, keepdim=True)
    return __call__


def _wrap_vfl_forward(orig):
    @functools.wraps(orig)
    def forward(self, pred_score, gt_score, label):
        if not ours(pred_score, gt_score, label) or gt_score.requires_grad:
            return orig(self, pred_score, gt_score, label)
        loss = DF.varifocal_loss(pred_score.float(), gt_score.float(), label=label,
                                 alpha=float(self.alpha), gamma=float(self.gamma),
                                 reduction="none")
        return loss.mean(1).sum()
    return forward


def _wrap_focal_forward(orig):
    @functools.wraps(orig)
    def forward(self, pred, label):
        a = self.alpha
        if (not ours(pred, label) or label.requires_grad
                or (isinstance(a, torch.Tensor) and a.numel() != 1)):
            return orig(self, pred, label)
        # ultralytics applies the alpha factor when alpha > 0 (it reads that on the host too)
        alpha = float(a) if not isinstance(a, torch.Tensor) else float(a.detach().cpu())
        loss = DF.sigmoid_focal_loss(pred, label, alpha=alpha if alpha > 0 else None,
                                     gamma=float(self.gamma), reduction="none")
        return loss.mean(1).sum()
    return forward


def _apply(ps):
    L, T = ps.mods["ultralytics.utils.loss"], ps.mods["ultralytics.utils.tal"]
    det = ps.original(L, "v8DetectionLoss")
    dist2bbox = ps.original(T, "dist2bbox")
    # look every name up before replacing any: a moved name fails before anything changes
    names = [
        (det, "get_assigned_targets_and_loss", _wrap_assigned),
        (det, "bbox_decode", lambda o: _wrap_bbox_decode(o, dist2bbox)),
        (L, "bbox_iou", _wrap_bbox_iou),
        (T, "bbox_iou", _wrap_bbox_iou),
        (ps.original(L, "DFLoss"), "__call__", _wrap_dfl_call),
        (ps.original(L, "VarifocalLoss"), "forward", _wrap_vfl_forward),
        (ps.original(L, "FocalLoss"), "forward", _wrap_focal_forward),
    ]
    ps.original(ps.original(L, "BboxLoss"), "forward")  # calls bbox_iou and DFLoss: must exist
    ps.original(ps.original(T, "TaskAlignedAssigner"), "iou_calculation")
    originals = [ps.original(owner, name) for owner, name, _ in names]
    for (owner, name, wrap), orig in zip(names, originals):
        ps.replace(owner, name, wrap(orig))


_switch = Switch("ultralytics", _load, _apply)
patch = _switch.patch
unpatch = _switch.unpatch
patched = _switch.patched


def is_patched():
    return _switch.is_patched


__all__ = ["patch", "unpatch", "patched", "is_patched", "FusedBCEWithLogits"]
