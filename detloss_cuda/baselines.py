"""The PyTorch code people run today for each loss (torchvision, mmdet, ultralytics), as the
benchmark's "eager" baseline and the function it hands to torch.compile.

These are not the oracle (that is ``reference``, written for accuracy, not speed); they are
the fastest common formulations, so that the benchmark's speedups are against what users
actually have. tests/test_baselines.py checks they compute the same losses.
"""
import math

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


def dense_target(x, labels, score):
    """What detectors build for the losses above from their assignment: the one-hot of each
    anchor's class (background = C, as mmdet marks it) times its score. ultralytics' TAL
    (F.one_hot, then * the normalised alignment metric) and torchvision's RetinaNet (zeros,
    then 1 at [foreground, label]) make the same tensor."""
    C = x.shape[-1]
    t = F.one_hot(labels.clamp(0, C), C + 1)[..., :C].to(x.dtype)
    return t * score.unsqueeze(-1).to(x.dtype)


def quality_focal_loss_label(x, labels, score, gamma=2.0, reduction="sum"):
    """mmdet's quality_focal_loss with the (label, score) target: negatives everywhere, then
    the positives rewritten by indexing (background = C)."""
    pred_sigmoid = x.sigmoid()
    zerolabel = torch.zeros_like(x)
    loss = F.binary_cross_entropy_with_logits(x, zerolabel, reduction="none") * pred_sigmoid.pow(gamma)
    C = x.shape[-1]
    xf, lf, sf, loss2 = x.reshape(-1, C), labels.reshape(-1), score.reshape(-1), loss.view(-1, C)
    pos = ((lf >= 0) & (lf < C)).nonzero().squeeze(1)
    pos_label = lf[pos].long()
    scale_factor = sf[pos] - pred_sigmoid.view(-1, C)[pos, pos_label]
    loss2[pos, pos_label] = F.binary_cross_entropy_with_logits(
        xf[pos, pos_label], sf[pos].to(x.dtype), reduction="none") * scale_factor.abs().pow(gamma)
    return _reduce(loss, reduction)


def _reduce(loss, reduction):
    return loss.sum() if reduction == "sum" else loss.mean() if reduction == "mean" else loss


def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):  # noqa: N803
    """ultralytics.utils.metrics.bbox_iou (8.3), transcribed."""
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
        w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    inter = (b1_x2.minimum(b2_x2) - b1_x1.maximum(b2_x1)).clamp_(0) * (
        b1_y2.minimum(b2_y2) - b1_y1.maximum(b2_y1)).clamp_(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if CIoU or DIoU or GIoU:
        cw = b1_x2.maximum(b2_x2) - b1_x1.minimum(b2_x1)
        ch = b1_y2.maximum(b2_y2) - b1_y1.minimum(b2_y1)
        if CIoU or DIoU:
            c2 = cw.pow(2) + ch.pow(2) + eps
            rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2).pow(2) + (b2_y1 + b2_y2 - b1_y1 - b1_y2).pow(2)) / 4
            if CIoU:
                v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
                with torch.no_grad():
                    alpha = v / (v - iou + (1 + eps))
                return iou - (rho2 / c2 + v * alpha)
            return iou - rho2 / c2
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    return iou


def iou_loss(pred, target, kind="iou", reduction="sum"):
    """The box loss as ultralytics' BboxLoss computes it: 1 - bbox_iou of xyxy pairs."""
    flags = {"giou": {"GIoU": True}, "diou": {"DIoU": True}, "ciou": {"CIoU": True}}.get(kind, {})
    return _reduce(1.0 - bbox_iou(pred, target, xywh=False, **flags), reduction)


def box_iou(boxes1, boxes2):
    """torchvision.ops.box_iou (pairwise IoU matrix), transcribed."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area1[:, None] + area2 - inter)


def distribution_focal_loss(pred_dist, target, reg_max=16, reduction="sum"):
    """ultralytics.utils.loss.DFLoss (8.3), transcribed, over rows of reg_max bins."""
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl = target.long()
    tr = tl + 1
    wl = tr - target
    wr = 1 - wl
    loss = (F.cross_entropy(pred_dist, tl.view(-1), reduction="none").view(tl.shape) * wl
            + F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl.shape) * wr)
    return _reduce(loss, reduction)


def distribution_integral(pred):
    """ultralytics' DFL decode: softmax over the bins, then the projection onto 0..R-1."""
    proj = torch.arange(pred.shape[-1], dtype=pred.dtype, device=pred.device)
    return pred.softmax(-1) @ proj


def _crop_mask(masks, boxes):
    """ultralytics.utils.ops.crop_mask (8.4), transcribed: zero outside each box, in place."""
    _, h, w = masks.shape
    x1, y1, x2, y2 = torch.chunk(boxes[:, :, None], 4, 1)
    r = torch.arange(w, device=masks.device, dtype=x1.dtype)[None, None, :]
    c = torch.arange(h, device=masks.device, dtype=x1.dtype)[None, :, None]
    masks *= (r >= x1) * (r < x2)
    masks *= (c >= y1) * (c < y2)
    return masks


def prototype_mask_loss(coef, proto, batch_index, boxes, area, masks, mask_index):
    """ultralytics' v8SegmentationLoss.calculate_segmentation_loss (8.4), transcribed: per image,
    its positives' (n, H, W) logits (einsum), ground truth (overlap_mask=True), BCE and crop,
    mean / area; summed over the images (before ultralytics' division by the positives)."""
    loss = 0
    for i in range(proto.shape[0]):
        sel = batch_index == i
        if not sel.any():
            continue
        gt = (masks[i] == (mask_index[sel] + 1).view(-1, 1, 1)).float()
        pred = torch.einsum("in,nhw->ihw", coef[sel], proto[i])
        bce = F.binary_cross_entropy_with_logits(pred, gt, reduction="none")
        loss = loss + (_crop_mask(bce, boxes[sel]).mean(dim=(1, 2)) / area[sel]).sum()
    return loss
