"""Public loss functions, backed by the fused ops in ``torch.ops.detloss``.

Classification losses: all take the logits ``input`` (any shape, float32, float64, float16 or
bfloat16, CPU or CUDA) and either a dense ``target`` of the same shape, or class indices:

* dense: ``target`` floating, shaped like ``input``, values in [0, 1];
* index: ``target`` int64 or int32, shaped ``input.shape[:-1]``, the class of each anchor over
  the last dimension of ``input`` (C classes): class ``target[a]`` of anchor ``a`` has target
  ``score[a]`` (``score``: a float tensor shaped like ``target``, default 1), every other class
  0; ``target[a] == ignore_index`` (default -100) drops the anchor (no loss, no gradient, not
  counted by ``'mean'``); any other value outside [0, C) (C as in mmdet, -1 as in apex) makes
  it background. No ``[..., C]`` target is built; the result equals the dense form with the
  one-hot (times ``score``) target. ``reduction='none'`` returns the ``[..., C]`` loss.

``label_smoothing=s`` (every function, both forms): the BCE term takes the target
``t·(1 - s) + s/2`` (apex, YOLOv5's ``smooth_BCE``); the focusing factors and ``alpha_t`` take
the unsmoothed ``t``.

They are differentiable with respect to ``input`` (a ``target``, ``weight``, ``pos_weight`` or
``score`` that requires grad is an error: detach it). ``weight`` multiplies the unreduced loss and broadcasts to it. ``reduction``
is ``'none'``, ``'mean'`` or ``'sum'``; the mean of an empty input is 0 (not NaN) and
still has a gradient path. Outputs have the input's dtype; the arithmetic runs in float32
(float64 for float64 inputs) and reductions accumulate in at least that precision in a
fixed, deterministic order (README, Numerics). Under autocast the losses run in float32, as torch's own BCE does.
"""

import torch

from . import _ops

__all__ = [
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
    "iou_loss",
    "generalized_box_iou_loss",
    "distance_box_iou_loss",
    "complete_box_iou_loss",
    "bbox_iou",
    "box_iou_matrix",
    "probiou",
    "probiou_loss",
    "batch_probiou",
    "distribution_focal_loss",
    "distribution_kl_loss",
    "distribution_integral",
    "prototype_mask_loss",
]

_REDUCTIONS = ("none", "mean", "sum")


# Argument values are checked once, by the C++ ops (csrc/ops/); Python checks only what the
# dispatcher would report without the argument's name (a non-tensor), and the nn modules'
# constructors check their settings early with these two.
def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")


def _check_tensor(name, t, optional=False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _cls_loss(input, target, kind, *, weight=None, pos_weight=None, label=None, alpha=None,
              gamma=0.0, reduction="mean", score=None, ignore_index=-100, label_smoothing=0.0):
    _check_tensor("input", input)
    _check_tensor("target", target)
    _check_tensor("weight", weight, optional=True)
    _check_tensor("pos_weight", pos_weight, optional=True)
    _check_tensor("label", label, optional=True)
    _check_tensor("score", score, optional=True)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    if alpha is None:
        alpha = -1.0
    elif not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number or None, got {type(alpha).__name__}")
    if label is not None and label.dtype != torch.bool:
        if label.is_complex() or not isinstance(input, torch.Tensor):
            raise TypeError(f"label must be a bool or real tensor, got {label.dtype}")
        try:  # checked before label != 0 allocates the broadcast (an expanded label is cheap)
            shape = torch.broadcast_shapes(label.shape, input.shape)
        except RuntimeError:
            shape = None
        if shape != input.shape:
            raise ValueError(f"label of shape {tuple(label.shape)} must broadcast to input's "
                             f"shape {tuple(input.shape)}")
        label = label != 0  # one-hot 0/1 labels, as ultralytics passes them
    return _ops.ops.cls_loss(input, target, weight, pos_weight, label, kind, alpha, gamma,
                             reduction, score, label_smoothing, ignore_index)


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction="mean", *, score=None, ignore_index=-100,
                                     label_smoothing=0.0):
    """Sigmoid BCE, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    ``loss = (1 - t)·x + (1 + (pos_weight - 1)·t)·softplus(-x)``, times ``weight``;
    ``pos_weight`` broadcasts to the loss (typically ``[C]``, one per class). ``target``
    dense or class indices (module docstring).
    """
    return _cls_loss(input, target, "bce", weight=weight, pos_weight=pos_weight,
                     reduction=reduction, score=score, ignore_index=ignore_index,
                     label_smoothing=label_smoothing)


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="none", weight=None, *,
                       score=None, ignore_index=-100, label_smoothing=0.0):
    """RetinaNet's focal loss, as ``torchvision.ops.sigmoid_focal_loss`` (same defaults).

    ``loss = ce · α_t · (1 - p_t)^γ`` with ``p = sigmoid(x)``, ``p_t = t·p + (1 - t)(1 - p)``,
    ``α_t = t·α + (1 - t)(1 - α)``; ``alpha`` negative or None disables ``α_t``. ``target``
    dense or class indices (module docstring).
    """
    return _cls_loss(input, target, "focal", weight=weight, alpha=alpha, gamma=gamma,
                     reduction=reduction, score=score, ignore_index=ignore_index,
                     label_smoothing=label_smoothing)


def quality_focal_loss(input, target, gamma=2.0, alpha=None, reduction="mean", weight=None, *,
                       score=None, ignore_index=-100, label_smoothing=0.0):
    """Quality Focal Loss (Generalized Focal Loss) with a soft target ``t`` in [0, 1].

    ``loss = ce · |t - p|^γ`` (``alpha=None``: the GFL/mmdet form), or
    ``ce · α_t · |t - p|^γ`` with ``α_t = t·α + (1 - t)(1 - α)`` (YOLOv5's ``QFocalLoss``).
    With class indices, ``score`` is the IoU of each anchor's box (mmdet's ``(label, score)``).
    """
    return _cls_loss(input, target, "qfl", weight=weight, alpha=alpha, gamma=gamma,
                     reduction=reduction, score=score, ignore_index=ignore_index,
                     label_smoothing=label_smoothing)


def varifocal_loss(input, target, label=None, alpha=0.75, gamma=2.0, reduction="mean",
                   weight=None, *, score=None, ignore_index=-100, label_smoothing=0.0):
    """VariFocal Loss (VarifocalNet) with IoU-aware target ``t``.

    ``loss = ce · w`` with ``w = t`` on positives and ``w = α·p^γ`` on negatives; positives
    are ``label`` (bool, or 0/1 numbers) or, when ``label`` is None, ``t > 0``. With class
    indices the positives are the labelled classes (``label`` must be None) and ``t`` their
    ``score``. As in ultralytics and mmdet, the gradient flows through ``w``.
    """
    if alpha is None:
        raise ValueError("varifocal_loss: alpha (the weight of negatives) must be a number >= 0")
    return _cls_loss(input, target, "vfl", weight=weight, label=label, alpha=alpha,
                     gamma=gamma, reduction=reduction, score=score, ignore_index=ignore_index,
                     label_smoothing=label_smoothing)


# ------------------------------------------------------------------------- box losses
_BOX_KINDS = ("iou", "giou", "diou", "ciou")
_BOX_FORMATS = ("xyxy", "xywh")


def _check_box_args(kind, box_format):
    if kind not in _BOX_KINDS:
        raise ValueError(f"kind must be one of 'iou', 'giou', 'diou', 'ciou', got {kind!r}")
    if box_format not in _BOX_FORMATS:
        raise ValueError(f"box_format must be 'xyxy' (corners) or 'xywh' (centre, size), "
                         f"got {box_format!r}")


def iou_loss(pred, target, kind="iou", box_format="xyxy", eps=1e-7, reduction="mean",
             weight=None, floor=0.0):
    """``1 - metric`` of box pairs, metric one of IoU, GIoU, DIoU, CIoU, or of rotated box
    pairs ProbIoU and ProbIoU with CIoU's aspect term (``kind``: 'iou', 'giou', 'diou',
    'ciou', 'probiou', 'probiou_ciou').

    ``pred`` and ``target`` are ``[..., 4]`` with broadcastable leading dims, as corners
    ``(x1, y1, x2, y2)`` or, with ``box_format='xywh'``, centre and size ``(cx, cy, w, h)``;
    the rotated kinds take ``[..., 5]`` rows ``(cx, cy, w, h, angle)``, ``box_format='xywhr'``,
    and ``floor`` (added to each variance, ultralytics' ``RotatedBboxLoss.floor``).
    The unreduced loss has the broadcast leading shape; ``weight`` broadcasts to it.
    Differentiable with respect to both boxes (CIoU's trade-off alpha is a constant, as in
    ultralytics, torchvision and mmdet).
    """
    _check_tensor("pred", pred)
    _check_tensor("target", target)
    _check_tensor("weight", weight, optional=True)
    return _ops.ops.box_loss(pred, target, weight, kind, box_format, eps, reduction, floor)


def _check_box_pair(n1, b1, n2, b2):
    """The checks the op makes, worded with a wrapper's own argument names."""
    _check_tensor(n1, b1)
    _check_tensor(n2, b2)
    for n, b, integer_ok in ((n1, b1, False), (n2, b2, True)):
        if b.dim() == 0 or b.shape[-1] != 4:
            raise ValueError(f"{n} must have shape [..., 4], got {list(b.shape)}")
        if not (b.is_floating_point() or (integer_ok and not b.is_complex()
                                           and b.dtype != torch.bool)):
            raise TypeError(f"{n} must be a floating tensor of boxes"
                            f"{' (or integer)' if integer_ok else ''}, got {b.dtype}")
    if b1.device != b2.device:
        raise ValueError(f"{n2} is on {b2.device} but {n1} is on {b1.device}; all tensors must "
                         "be on one device")


def generalized_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    """``torchvision.ops.generalized_box_iou_loss``: ``1 - GIoU`` of xyxy box pairs."""
    _check_box_pair("boxes1", boxes1, "boxes2", boxes2)
    return iou_loss(boxes1, boxes2, "giou", "xyxy", eps, reduction)


def distance_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    """``torchvision.ops.distance_box_iou_loss``: ``1 - DIoU`` of xyxy box pairs."""
    _check_box_pair("boxes1", boxes1, "boxes2", boxes2)
    return iou_loss(boxes1, boxes2, "diou", "xyxy", eps, reduction)


def complete_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    """``torchvision.ops.complete_box_iou_loss``: ``1 - CIoU`` of xyxy box pairs.

    (torchvision takes ``atan(w / h)``; this takes ``atan(w / (h + eps))``, which differs by
    O(eps) and stays finite for zero-height boxes.)
    """
    _check_box_pair("boxes1", boxes1, "boxes2", boxes2)
    return iou_loss(boxes1, boxes2, "ciou", "xyxy", eps, reduction)


def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):  # noqa: N803
    """ultralytics / YOLOv5 ``bbox_iou``: the metric (not the loss) of box pairs, shaped like
    theirs (broadcast leading dims, last dim 1), differentiable with respect to both boxes.
    CIoU takes precedence over DIoU over GIoU, as there."""
    kind = "ciou" if CIoU else "diou" if DIoU else "giou" if GIoU else "iou"
    _check_box_pair("box1", box1, "box2", box2)
    fmt = "xywh" if xywh else "xyxy"
    dtype = box1.dtype
    if dtype in (torch.float16, torch.bfloat16):
        # 1 - (the loss rounded to fp16) would lose the metric's digits near 0: the metric is
        # formed in float32 and rounded once (the gradient flows back through the casts)
        metric = 1 - iou_loss(box1.float(), box2.float(), kind, fmt, eps, "none")
        return metric.to(dtype).unsqueeze(-1)
    return (1 - iou_loss(box1, box2, kind, fmt, eps, "none")).unsqueeze(-1)


def box_iou_matrix(boxes1, boxes2, kind="iou", box_format="xyxy", eps=1e-7, floor=0.0):
    """The metric of every pair: ``[N, 4] x [M, 4] -> [N, M]``, or batched
    ``[B, N, 4] x [B, M, 4] -> [B, N, M]`` — what label assigners compute (rows of 5 and
    ``box_format='xywhr'`` for the 'probiou' kinds).

    Forward only: it has no gradient (calling backward through it raises). Integer boxes are
    computed in float32, as ``torchvision.ops.box_iou`` does.
    """
    _check_tensor("boxes1", boxes1)
    _check_tensor("boxes2", boxes2)
    return _ops.ops.box_iou_matrix(boxes1, boxes2, kind, box_format, eps, floor)


def _check_obb_pair(n1, b1, n2, b2):
    _check_tensor(n1, b1)
    _check_tensor(n2, b2)
    for n, b in ((n1, b1), (n2, b2)):
        if b.dim() == 0 or b.shape[-1] != 5:
            raise ValueError(f"{n} must have shape [..., 5] (xywhr), got {list(b.shape)}")
        if not b.is_floating_point():
            raise TypeError(f"{n} must be a floating tensor of rotated boxes, got {b.dtype}")
    if b1.device != b2.device:
        raise ValueError(f"{n2} is on {b2.device} but {n1} is on {b1.device}; all tensors must "
                         "be on one device")


def probiou(obb1, obb2, CIoU=False, eps=1e-7, floor=0.0):  # noqa: N803
    """ultralytics' ``probiou``: the probabilistic IoU of rotated box pairs ``[..., 5]``
    (xywhr), shaped like theirs (broadcast leading dims, last dim 1), differentiable with
    respect to both boxes; ``CIoU`` subtracts the aspect term (its alpha a constant).

    One fused kernel (forward and gradient in one pass) instead of ~60 elementwise ops;
    ``1 - exp(-bd)`` is formed without cancellation (see docs/api.md, "ProbIoU")."""
    _check_obb_pair("obb1", obb1, "obb2", obb2)
    kind = "probiou_ciou" if CIoU else "probiou"
    dtype = obb1.dtype
    if dtype in (torch.float16, torch.bfloat16):  # as bbox_iou: the metric formed in float32
        metric = 1 - iou_loss(obb1.float(), obb2.float(), kind, "xywhr", eps, "none", floor=floor)
        return metric.to(dtype).unsqueeze(-1)
    return (1 - iou_loss(obb1, obb2, kind, "xywhr", eps, "none", floor=floor)).unsqueeze(-1)


def probiou_loss(pred, target, CIoU=False, eps=1e-7, floor=0.0, reduction="mean",  # noqa: N803
                 weight=None):
    """``(1 - ProbIoU)·weight`` of rotated box pairs (xywhr), reduced: ultralytics'
    ``RotatedBboxLoss`` box term is ``probiou_loss(pred, target, floor=0.01,
    weight=score_sum, reduction='sum') / target_scores_sum``."""
    _check_obb_pair("pred", pred, "target", target)
    return iou_loss(pred, target, "probiou_ciou" if CIoU else "probiou", "xywhr", eps, reduction,
                    weight, floor)


def batch_probiou(obb1, obb2, eps=1e-7):
    """ultralytics' ``batch_probiou``: ProbIoU of every pair, ``[N, 5] x [M, 5] -> [N, M]``
    (or batched ``[B, N, 5] x [B, M, 5]``); forward only. NumPy arrays are accepted, as there."""
    import numpy as np
    if isinstance(obb1, np.ndarray):
        obb1 = torch.from_numpy(obb1)
    if isinstance(obb2, np.ndarray):
        obb2 = torch.from_numpy(obb2)
    _check_obb_pair("obb1", obb1, "obb2", obb2)
    if not (obb1.dim() == obb2.dim() == 2 or (obb1.dim() == obb2.dim() == 3
                                              and obb1.shape[0] == obb2.shape[0])):
        raise ValueError(f"obb1 and obb2 must be [N, 5] and [M, 5], or [B, N, 5] and [B, M, 5]; "
                         f"got {list(obb1.shape)} and {list(obb2.shape)}")
    return box_iou_matrix(obb1, obb2, "probiou", "xywhr", eps)


# ------------------------------------------------------------------- distribution (DFL)
def distribution_focal_loss(pred, target, reduction="mean", weight=None, *, weight_right=None):
    """Distribution Focal Loss (GFL): ``pred [..., R]`` bin logits, ``target [...]`` the
    continuous distance in bins.

    ``target`` is clamped to ``[0, R - 1 - 0.01]`` (ultralytics' convention), then with
    ``l = floor(y)``, ``r = l + 1``: ``loss = -((r - y)·log softmax(z)_l + (y - l)·log softmax(z)_r)``.
    Differentiable with respect to ``pred`` only. A NaN target gives a NaN loss for its row
    (detecting it would need a host synchronisation). ``R`` from 2 to 1024; targets are
    read in float32 (float64 for float64 logits), whatever the logits' dtype.

    With ``weight_right [...]`` (D-FINE's FGL, whose bins are not uniform): ``target``'s integer
    part is the left bin ``l`` (``0 <= l <= R - 2``; not clamped), ``weight_right`` the right
    bin's weight and ``1 - weight_right`` the left's:
    ``loss = (1 - wr)·CE(z, l) + wr·CE(z, l + 1)``, D-FINE's
    ``unimodal_distribution_focal_loss`` row. A left bin outside ``[0, R - 2]`` gives a NaN
    loss for its row (the library's cross-entropy raises; checking would need a host
    synchronisation).
    """
    _check_tensor("pred", pred)
    _check_tensor("target", target)
    _check_tensor("weight", weight, optional=True)
    _check_tensor("weight_right", weight_right, optional=True)
    if weight_right is not None:
        if weight_right.shape != target.shape:
            raise ValueError(f"distribution_focal_loss: weight_right of shape {tuple(weight_right.shape)} "
                             f"must have target's shape {tuple(target.shape)}")
        if target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"distribution_focal_loss: target must be a real tensor of left bins, got "
                            f"{target.dtype}")
        if not weight_right.is_floating_point():
            raise TypeError(f"distribution_focal_loss: weight_right must be a floating tensor, got "
                            f"{weight_right.dtype}")
        if weight_right.requires_grad:
            raise RuntimeError("distribution_focal_loss: weight_right requires grad; the loss is "
                               "differentiable with respect to pred only (detach it)")
        if weight_right.device != target.device:
            raise ValueError(f"distribution_focal_loss: weight_right is on {weight_right.device}, "
                             f"target on {target.device}")
        # the op's split form: [..., 2] (left bin, right weight) in the targets' dtype (opmath)
        tt = _ops._opmath(pred.dtype)
        target = torch.stack([target.to(tt), weight_right.to(tt)], -1)
    elif pred.dim() >= 1 and target.shape == (*pred.shape[:-1], 2):
        # the op's split form is reached through weight_right only: here a shape error
        raise ValueError(f"detloss.dfl_loss: target of shape {list(target.shape)} must have the "
                         f"leading shape of pred {list(pred.shape)}, i.e. {list(pred.shape[:-1])} "
                         "(D-FINE's left bins and right weights: pass weight_right)")
    return _ops.ops.dfl_loss(pred, target, weight, reduction)[0]


def distribution_kl_loss(pred, teacher, temperature=1.0):
    """The distillation KL of bin distributions (D-FINE's decoupled distillation, LD), per row:
    ``T²·KL(softmax(teacher/T) || softmax(pred/T))`` over the last dimension (``R`` bins, 2 to
    1024), shaped ``pred.shape[:-1]``: torch's ``kl_div(log_softmax(pred/T),
    softmax(teacher/T), reduction='none').sum(-1) · T²`` without its ``[..., R]`` tensors.
    Differentiable with respect to ``pred`` only (``teacher`` must not require grad: detach
    it); weight and reduce the rows as the caller's loss does."""
    _check_tensor("pred", pred)
    _check_tensor("teacher", teacher)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    return _ops.ops.dfl_kl(pred, teacher, float(temperature))[0]


def distribution_integral(pred):
    """The expected bin of each row: ``sum_i i·softmax(pred)_i``, ``[..., R] -> [...]``,
    differentiable — what turns a GFL / YOLOv8 head's distribution into a distance."""
    _check_tensor("pred", pred)
    return _ops.ops.dfl_integral(pred)[0]


def prototype_mask_loss(coef, proto, batch_index, boxes, area, masks, mask_index, overlap=True,
                        reduction="mean", positive=None):
    """The prototype mask loss of YOLACT-style instance segmentation, ultralytics' YOLO
    segmentation loss (``v8SegmentationLoss.calculate_segmentation_loss``) in one op.

    Positive ``p`` has mask coefficients ``coef[p]`` (``[..., nm]``: a list ``[P, nm]``, or
    every anchor of a batch ``[B, A, nm]`` with ``positive [B, A]`` (bool, ultralytics'
    ``fg_mask``) saying which are positives: the others have no loss and a zero gradient, are
    not counted by ``'mean'`` and their indices are never read; no data-dependent shape, so a
    compiled step does not break). ``batch_index``, ``area``, ``mask_index`` have the leading
    shape, ``boxes`` that and 4. Its mask logits are
    ``z_p = sum_k coef[p, k] · proto[b_p, k]`` over its image ``b_p = batch_index[p]`` of the
    prototypes ``proto [B, nm, H, W]``; its loss is ultralytics' ``single_mask_loss`` term::

        loss_p = (sum over the pixels of box_p of BCE(z_p, t_p)) / (H·W) / area[p]

    where ``box_p = boxes[p]`` (xyxy in prototype pixels) holds the pixels with
    ``x1 <= col < x2`` and ``y1 <= row < y2`` (``crop_mask``'s rule on pixel indices) and
    ``area[p]`` is the box's normalised area. The ground truth ``t_p``, in either of
    ultralytics' forms: ``overlap=True``: ``masks [B, H, W]`` holds each image's instance
    indices (0 background, ``i + 1`` its object ``i``) and ``t_p = (masks[b_p] ==
    mask_index[p] + 1)``; ``overlap=False``: ``masks [N, H, W]`` holds 0/1 masks and
    ``t_p = masks[mask_index[p]]``. ``'mean'`` divides the sum by the number of positives:
    ultralytics' value (before its ``box`` gain); ``'none'`` returns the leading shape.

    Only the pixels inside each box are computed; no ``(P, H, W)`` tensor is built.
    Differentiable with respect to ``coef`` and ``proto`` (the prototypes' gradient sums over
    an image's positives in a fixed order). A zero ``area`` gives ultralytics' numbers: an inf
    or NaN loss, and NaN gradients where ultralytics' crop makes ``inf · 0``: at its image's
    pixels outside the box (the prototypes' gradient there, and the coefficients' unless the
    box covers the whole image). A NaN or inf logit outside every box never reaches the loss
    (ultralytics: ``NaN · 0``).
    ``nm`` up to 64; ``batch_index`` and ``mask_index`` int64 or int32 (out of range: an error
    on the CPU, a NaN loss on CUDA, which does not synchronise to check).
    """
    for name, t in (("coef", coef), ("proto", proto), ("batch_index", batch_index),
                    ("boxes", boxes), ("area", area), ("masks", masks),
                    ("mask_index", mask_index)):
        _check_tensor(name, t)
    _check_tensor("positive", positive, optional=True)
    return _ops.ops.prototype_mask_loss(coef, proto, batch_index, boxes, area, masks, mask_index,
                                        bool(overlap), reduction, positive)
