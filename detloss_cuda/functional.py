"""Public loss functions, backed by the fused ops in ``torch.ops.detloss``.

All take the logits ``input`` and a ``target`` of the same shape (any shape), in float32,
float64, float16 or bfloat16, on CPU or CUDA, and are differentiable with respect to
``input`` (a ``target``, ``weight`` or ``pos_weight`` that requires grad is an error:
detach it). ``weight`` multiplies the unreduced loss and broadcasts to it. ``reduction``
is ``'none'``, ``'mean'`` or ``'sum'``; the mean of an empty input is 0 (not NaN) and
still has a gradient path. Outputs have the input's dtype; the arithmetic runs in float32
(float64 for float64 inputs) and reductions accumulate in float32 (float64) in a fixed,
deterministic order. Under autocast the losses run in float32, as torch's own BCE does.
"""
import math

import torch

from . import _ops

__all__ = [
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")


def _check_gamma(gamma):
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    return float(gamma)


def _check_tensor(name, t, optional=False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _cls_loss(input, target, kind, *, weight=None, pos_weight=None, label=None, alpha=None,
              gamma=0.0, reduction="mean"):
    _check_tensor("input", input)
    _check_tensor("target", target)
    _check_tensor("weight", weight, optional=True)
    _check_tensor("pos_weight", pos_weight, optional=True)
    _check_tensor("label", label, optional=True)
    _check_reduction(reduction)
    gamma = _check_gamma(gamma)
    if alpha is None:
        alpha = -1.0
    elif not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number or None, got {type(alpha).__name__}")
    if label is not None and label.dtype != torch.bool:
        label = label != 0  # one-hot 0/1 labels, as ultralytics passes them
    return _ops.ops.cls_loss(input, target, weight, pos_weight, label, kind, float(alpha), gamma,
                             reduction)


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction="mean"):
    """Sigmoid BCE, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    ``loss = (1 - t)·x + (1 + (pos_weight - 1)·t)·softplus(-x)``, times ``weight``;
    ``pos_weight`` broadcasts to the loss (typically ``[C]``, one per class).
    """
    return _cls_loss(input, target, "bce", weight=weight, pos_weight=pos_weight,
                     reduction=reduction)


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="none", weight=None):
    """RetinaNet's focal loss, as ``torchvision.ops.sigmoid_focal_loss`` (same defaults).

    ``loss = ce · α_t · (1 - p_t)^γ`` with ``p = sigmoid(x)``, ``p_t = t·p + (1 - t)(1 - p)``,
    ``α_t = t·α + (1 - t)(1 - α)``; ``alpha`` negative or None disables ``α_t``.
    """
    return _cls_loss(input, target, "focal", weight=weight, alpha=alpha, gamma=gamma,
                     reduction=reduction)


def quality_focal_loss(input, target, gamma=2.0, alpha=None, reduction="mean", weight=None):
    """Quality Focal Loss (Generalized Focal Loss) with a soft target ``t`` in [0, 1].

    ``loss = ce · |t - p|^γ`` (``alpha=None``: the GFL/mmdet form), or
    ``ce · α_t · |t - p|^γ`` with ``α_t = t·α + (1 - t)(1 - α)`` (YOLOv5's ``QFocalLoss``).
    """
    return _cls_loss(input, target, "qfl", weight=weight, alpha=alpha, gamma=gamma,
                     reduction=reduction)


def varifocal_loss(input, target, label=None, alpha=0.75, gamma=2.0, reduction="mean",
                   weight=None):
    """VariFocal Loss (VarifocalNet) with IoU-aware target ``t``.

    ``loss = ce · w`` with ``w = t`` on positives and ``w = α·p^γ`` on negatives; positives
    are ``label`` (bool, or 0/1 numbers) or, when ``label`` is None, ``t > 0``. As in
    ultralytics and mmdet, the gradient flows through ``w``.
    """
    if alpha is None:
        raise ValueError("varifocal_loss: alpha (the weight of negatives) must be a number >= 0")
    return _cls_loss(input, target, "vfl", weight=weight, label=label, alpha=alpha,
                     gamma=gamma, reduction=reduction)
