"""The PyTorch code people run today for each loss (torchvision, mmdet, ultralytics), as the
benchmark's "eager" baseline and the function it hands to torch.compile.

These are not the oracle (that is ``reference``, written for accuracy, not speed); they are
the fastest common formulations, so that the benchmark's speedups are against what users
actually have. tests/test_baselines.py checks they compute the same losses.
"""
import torch
import torch.nn.functional as F


def binary_cross_entropy_with_logits(x, t, reduction="sum"):
    return F.binary_cross_entropy_with_logits(x, t, reduction=reduction)


def sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="sum"):
    # torchvision.ops.sigmoid_focal_loss
    p = torch.sigmoid(x)
    ce_loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def quality_focal_loss(x, t, gamma=2.0, reduction="sum"):
    # mmdet quality_focal_loss_tensor_target (GFL)
    scale_factor = x.sigmoid() - t
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none") * scale_factor.abs().pow(gamma)
    return _reduce(loss, reduction)


def varifocal_loss(x, t, alpha=0.75, gamma=2.0, reduction="sum"):
    # ultralytics VarifocalLoss, with the positives taken as t > 0
    label = (t > 0).to(x.dtype)
    weight = alpha * x.sigmoid().pow(gamma) * (1 - label) + t * label
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none") * weight
    return _reduce(loss, reduction)


def _reduce(loss, reduction):
    return loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss
