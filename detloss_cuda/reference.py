"""The oracle: every loss of detloss_cuda written directly from its formula in pure PyTorch,
differentiated by autograd. It never calls the extension; tests compare the fused ops
against it. Same signatures as ``detloss_cuda.functional``.

Slow and memory-hungry on purpose (one tensor per term); never used on a training path.
"""
import torch
import torch.nn.functional as F

__all__ = [
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
    "quality_focal_loss",
    "varifocal_loss",
]


def _reduce(loss, weight, reduction):
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # the mean of nothing is 0 (with a gradient path), not NaN
        return loss.sum() / max(loss.numel(), 1)
    raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")


def _ce(x, t, pos_weight=None):
    """BCE with logits: (1 - t)·softplus(x) + pw·t·softplus(-x), softplus(z) = -logsigmoid(-z).

    Equal to torch's (1 - t)·x + (1 + (pw - 1)·t)·softplus(-x), without its cancellation
    (which, even in float64, costs the value and autograd gradient of a small loss their
    digits, e.g. at x = -30, t = 0).
    """
    pw = 1 if pos_weight is None else pos_weight
    return -(1 - t) * F.logsigmoid(-x) - pw * t * F.logsigmoid(x)


def _alpha_t(t, alpha):
    if alpha is None or alpha < 0:
        return 1
    return t * alpha + (1 - t) * (1 - alpha)


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction="mean"):
    return _reduce(_ce(input, target, pos_weight), weight, reduction)


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="none", weight=None,
                       *, pos_weight=None):
    p = torch.sigmoid(input)
    p_t = p * target + (1 - p) * (1 - target)
    loss = _ce(input, target, pos_weight) * _alpha_t(target, alpha) * (1 - p_t) ** gamma
    return _reduce(loss, weight, reduction)


def quality_focal_loss(input, target, gamma=2.0, alpha=None, reduction="mean", weight=None,
                       *, pos_weight=None):
    p = torch.sigmoid(input)
    loss = _ce(input, target, pos_weight) * _alpha_t(target, alpha) * (target - p).abs() ** gamma
    return _reduce(loss, weight, reduction)


def varifocal_loss(input, target, label=None, alpha=0.75, gamma=2.0, reduction="mean",
                   weight=None, *, pos_weight=None):
    p = torch.sigmoid(input)
    pos = target > 0 if label is None else label.bool()
    w = torch.where(pos, target, alpha * p ** gamma)
    return _reduce(_ce(input, target, pos_weight) * w, weight, reduction)
