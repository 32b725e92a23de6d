"""``nn.Module`` drop-ins with the constructors of the seed article / YOLOv5 ``utils/loss.py``.

``FocalLoss``, ``QualityFocalLoss`` and ``VariFocalLoss`` wrap an ``nn.BCEWithLogitsLoss``
(``loss_fcn``) as YOLOv5 does: its ``reduction`` becomes theirs, its ``weight`` and
``pos_weight`` are honoured, and, as in YOLOv5, ``loss_fcn.reduction`` is set to
``'none'`` (the focal term applies per element). ``true`` may also be class indices with a
per-anchor ``score`` (see ``functional``); ``ignore_index`` and ``label_smoothing`` are
keyword arguments of the constructors.
"""
import torch
from torch import nn

from . import functional as F
from .functional import _check_reduction, _cls_loss

__all__ = [
    "BCEWithLogitsLoss",
    "FocalLoss",
    "QualityFocalLoss",
    "QFocalLoss",
    "VariFocalLoss",
    "VarifocalLoss",
    "IoULoss",
    "GIoULoss",
    "DIoULoss",
    "CIoULoss",
    "ProbIoULoss",
    "DistributionFocalLoss",
    "TaskAlignedAssigner",
    "SegTaskAlignedAssigner",
    "RotatedTaskAlignedAssigner",
    "PoseTaskAlignedAssigner",
]


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` (same constructor, buffers and state dict), fused;
    ``target`` may also be class indices (``functional``), with ``score``."""

    def forward(self, input, target, score=None):
        return F.binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                  pos_weight=self.pos_weight,
                                                  reduction=self.reduction, score=score)


class _WrappedBCE(nn.Module):
    _kind = None

    def __init__(self, loss_fcn=None, gamma=1.5, alpha=0.25, *, ignore_index=-100,
                 label_smoothing=0.0):
        super().__init__()
        if loss_fcn is None:
            loss_fcn = nn.BCEWithLogitsLoss()
        if not isinstance(loss_fcn, nn.BCEWithLogitsLoss):
            raise TypeError(
                f"{type(self).__name__}: loss_fcn must be an nn.BCEWithLogitsLoss (its "
                f"reduction, weight and pos_weight are used), got {type(loss_fcn).__name__}")
        _check_reduction(loss_fcn.reduction)
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def _loss(self, pred, true, label=None, score=None):
        return _cls_loss(pred, true, self._kind, weight=self.loss_fcn.weight,
                         pos_weight=self.loss_fcn.pos_weight, label=label, alpha=self.alpha,
                         gamma=self.gamma, reduction=self.reduction, score=score,
                         ignore_index=self.ignore_index, label_smoothing=self.label_smoothing)

    def extra_repr(self):
        return f"gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}"


class FocalLoss(_WrappedBCE):
    """Focal loss ``ce · α_t · (1 - p_t)^γ`` (RetinaNet); ``alpha=None`` disables ``α_t``."""

    _kind = "focal"

    def __init__(self, loss_fcn=None, gamma=1.5, alpha=0.25, *, ignore_index=-100,
                 label_smoothing=0.0):
        super().__init__(loss_fcn, gamma, alpha, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)

    def forward(self, pred, true, score=None):
        return self._loss(pred, true, score=score)


class QualityFocalLoss(_WrappedBCE):
    """Quality focal loss ``ce · α_t · |t - p|^γ`` (YOLOv5's ``QFocalLoss``);
    ``alpha=None`` gives the GFL/mmdet form ``ce · |t - p|^γ``."""

    _kind = "qfl"

    def __init__(self, loss_fcn=None, gamma=1.5, alpha=0.25, *, ignore_index=-100,
                 label_smoothing=0.0):
        super().__init__(loss_fcn, gamma, alpha, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)

    def forward(self, pred, true, score=None):
        return self._loss(pred, true, score=score)


class VariFocalLoss(_WrappedBCE):
    """VariFocal loss ``ce · w``, ``w = t`` on positives, ``α·p^γ`` on negatives.
    Positives are ``label`` if given, else ``true > 0``."""

    _kind = "vfl"

    def __init__(self, loss_fcn=None, gamma=1.5, alpha=0.75, *, ignore_index=-100,
                 label_smoothing=0.0):
        super().__init__(loss_fcn, gamma, alpha, ignore_index=ignore_index,
                         label_smoothing=label_smoothing)

    def forward(self, pred, true, label=None, score=None):
        return self._loss(pred, true, label, score)


QFocalLoss = QualityFocalLoss
VarifocalLoss = VariFocalLoss


class _BoxLoss(nn.Module):
    _kind = None

    def __init__(self, box_format="xyxy", eps=1e-7, reduction="mean"):
        super().__init__()
        F._check_box_args(self._kind, box_format)
        _check_reduction(reduction)
        self.box_format, self.eps, self.reduction = box_format, eps, reduction

    def forward(self, pred, target, weight=None):
        return F.iou_loss(pred, target, self._kind, self.box_format, self.eps, self.reduction,
                          weight)

    def extra_repr(self):
        return f"box_format={self.box_format!r}, eps={self.eps}, reduction={self.reduction!r}"


class ProbIoULoss(nn.Module):
    """``(1 - ProbIoU)·weight`` of rotated box pairs ``[..., 5]`` (xywhr), reduced (see
    ``functional.probiou_loss``); ``floor`` as ultralytics' ``RotatedBboxLoss.floor``."""

    def __init__(self, CIoU=False, eps=1e-7, floor=0.0, reduction="mean"):  # noqa: N803
        super().__init__()
        _check_reduction(reduction)
        self.CIoU, self.eps, self.floor, self.reduction = CIoU, eps, floor, reduction

    def forward(self, pred, target, weight=None):
        return F.probiou_loss(pred, target, self.CIoU, self.eps, self.floor, self.reduction, weight)

    def extra_repr(self):
        return (f"CIoU={self.CIoU}, eps={self.eps}, floor={self.floor}, "
                f"reduction={self.reduction!r}")


class IoULoss(_BoxLoss):
    """``1 - IoU`` of box pairs (see ``functional.iou_loss``)."""

    _kind = "iou"


class GIoULoss(_BoxLoss):
    """``1 - GIoU`` of box pairs."""

    _kind = "giou"


class DIoULoss(_BoxLoss):
    """``1 - DIoU`` of box pairs."""

    _kind = "diou"


class CIoULoss(_BoxLoss):
    """``1 - CIoU`` of box pairs (alpha a constant for the gradient)."""

    _kind = "ciou"


class DistributionFocalLoss(nn.Module):
    """ultralytics' ``DFLoss`` / the seed's ``DistributionFocalLoss(reg_max)``:
    ``forward(pred_dist, target)`` with ``pred_dist`` reshaped to ``(-1, reg_max)`` and
    ``target`` of shape ``(n, 4)`` (distances to the four sides, in bins), returning the
    loss of each box averaged over its four sides, shape ``(n, 1)``."""

    def __init__(self, reg_max=16):
        super().__init__()
        if not isinstance(reg_max, int) or reg_max < 2:
            raise ValueError(f"reg_max must be an int >= 2 (DFL needs at least 2 bins), got {reg_max!r}")
        self.reg_max = reg_max

    def forward(self, pred_dist, target):
        F._check_tensor("pred_dist", pred_dist)
        F._check_tensor("target", target)
        loss = F.distribution_focal_loss(pred_dist.reshape(*target.shape, self.reg_max), target,
                                         reduction="none")
        return loss.mean(-1, keepdim=True)

    def extra_repr(self):
        return f"reg_max={self.reg_max}"


class TaskAlignedAssigner(nn.Module):
    """ultralytics 8.4's ``ultralytics.utils.tal.TaskAlignedAssigner``, fused
    (``detloss_cuda.assign``): the same constructor, attributes, ``forward`` arguments and
    five outputs, without its ``(batch, boxes, anchors)`` tensors. ``forward`` also takes
    ``scores_are_logits=True`` (``pd_scores`` are the head's logits) and ``index=True`` (the
    per-anchor label and score for the index-target losses, ``assign.AssignResult``)."""

    def __init__(self, topk=13, num_classes=80, alpha=1.0, beta=6.0, stride=None, eps=1e-9,
                 topk2=None):
        super().__init__()
        from .assign import stride_value

        self.topk = topk
        self.topk2 = topk2 or topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.stride = stride if stride is not None else [8, 16, 32]
        self.stride_val = stride_value(self.stride)
        self.eps = eps

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, *,
                scores_are_logits=False, index=False):
        return self._assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            scores_are_logits=scores_are_logits, index=index)

    def _assign(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **kw):
        """task_aligned_assign with this assigner's settings (and ultralytics' bs, n_max_boxes
        attributes); kw: the forward's flags and a subclass's overlap arguments."""
        from .assign import task_aligned_assign

        self.bs = pd_scores.shape[0]
        self.n_max_boxes = gt_bboxes.shape[1]
        return task_aligned_assign(
            pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=self.topk,
            num_classes=self.num_classes, alpha=self.alpha, beta=self.beta,
            stride_val=self.stride_val, eps=self.eps, topk2=self.topk2, **kw)

    def extra_repr(self):
        return (f"topk={self.topk}, topk2={self.topk2}, num_classes={self.num_classes}, "
                f"alpha={self.alpha}, beta={self.beta}, stride={self.stride}")


class SegTaskAlignedAssigner(TaskAlignedAssigner):
    """ultralytics 8.4's ``ultralytics.utils.tal.SegTaskAlignedAssigner`` (YOLO26-seg), fused:
    the overlap of a pair is the mean of its CIoU and the IoU of the anchor's binarised, cropped
    predicted mask with the box's ground-truth mask, the latter for each box's ``3 · topk``
    best pairs by the box metric (``detloss_cuda.assign.task_aligned_assign``); no
    ``(batch, boxes, anchors)`` or ``(pairs, H, W)`` tensor. ``forward`` takes ultralytics'
    ``pd_coef [B, A, nm]``, ``mask_scale [B, 1]``, ``proto [B, nm, H, W]`` and bool
    ``gt_masks [B, M, H, W]``, and ``scores_are_logits`` / ``index`` as the detection one."""

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, pd_coef,
                mask_scale, proto, gt_masks, *, scores_are_logits=False, index=False):
        return self._assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            scores_are_logits=scores_are_logits, index=index, pd_coef=pd_coef,
                            mask_scale=mask_scale, proto=proto, gt_masks=gt_masks)


class RotatedTaskAlignedAssigner(TaskAlignedAssigner):
    """ultralytics 8.4's ``ultralytics.utils.tal.RotatedTaskAlignedAssigner`` (YOLO-OBB), fused:
    boxes ``[..., 5]`` xywhr, the rotated candidate test (the anchor's projections on the
    box's sides) and ``max(ProbIoU, 0)`` as the overlap
    (``detloss_cuda.assign.task_aligned_assign(rotated=True)``); no ``(batch, boxes,
    anchors)`` tensor. The same constructor, ``forward`` and outputs (``target_bboxes
    [B, A, 5]``), and ``scores_are_logits`` / ``index`` as the detection one."""

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, *,
                scores_are_logits=False, index=False):
        return self._assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            scores_are_logits=scores_are_logits, index=index, rotated=True)


class PoseTaskAlignedAssigner(TaskAlignedAssigner):
    """ultralytics 8.4's ``ultralytics.utils.tal.PoseTaskAlignedAssigner`` (YOLO26-pose), fused:
    the overlap of a pair is the OKS of its keypoints (the CIoU for a box without a visible
    one) and a box is a candidate only of the anchors whose level fits its size
    (``level_range``, ultralytics' gate and its fallback)
    (``detloss_cuda.assign.task_aligned_assign``); no ``(batch, boxes, anchors)`` tensor.
    The same constructor (``sigmas [K]`` first), ``forward(..., anc_strides, pd_kpts=...,
    gt_kpts=...)`` and outputs, and ``scores_are_logits`` / ``index`` as the detection one."""

    level_range = (2.0, 12.0)  # (lo, hi) ground-truth size range per stride, in strides

    def __init__(self, sigmas, **kwargs):
        super().__init__(**kwargs)
        self.sigmas = sigmas

    @torch.no_grad()
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, anc_strides,
                *, pd_kpts, gt_kpts, scores_are_logits=False, index=False):
        self.anc_strides = anc_strides
        return self._assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            scores_are_logits=scores_are_logits, index=index,
                            anc_strides=anc_strides, pd_kpts=pd_kpts, gt_kpts=gt_kpts,
                            sigmas=self.sigmas, level_range=self.level_range)
