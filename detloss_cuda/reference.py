"""The oracle: every loss of detloss_cuda written directly from its formula in pure PyTorch,
differentiated by autograd. It never calls the extension; tests compare the fused ops
against it. Same signatures as ``detloss_cuda.functional``.

Slow and memory-hungry on purpose (one tensor per term); never used on a training path.
"""
import math

import torch
import torch.nn.functional as F

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
    "distribution_focal_loss",
    "distribution_integral",
    "task_aligned_assign",
    "prototype_mask_loss",
]


def _reduce(loss, weight, reduction, keep=None):
    """`keep` (bool, broadcast to loss): the elements that count; the others are 0 and the
    'mean' divides by how many are kept."""
    if weight is not None:
        loss = loss * weight
    count = loss.numel()
    if keep is not None:
        keep = keep.expand(loss.shape)
        loss = torch.where(keep, loss, torch.zeros_like(loss))
        count = int(keep.sum())
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        # the mean of nothing is 0 (with a gradient path), not NaN
        return loss.sum() / max(count, 1)
    raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}")


def _ce(x, t, pos_weight=None):
    """BCE with logits: (1 - t)·softplus(x) + pw·t·softplus(-x), softplus(z) = -logsigmoid(-z).

    Equal to torch's (1 - t)·x + (1 + (pw - 1)·t)·softplus(-x), without its cancellation
    (which, even in float64, costs the value and autograd gradient of a small loss their
    digits, e.g. at x = -30, t = 0).
    """
    pw = 1 if pos_weight is None else pos_weight
    return -(1 - t) * F.logsigmoid(-x) - pw * t * F.logsigmoid(x)


def _smooth(t, s):
    """Binary label smoothing (apex, YOLOv5's smooth_BCE): the BCE term's target."""
    return t if not s else t * (1 - s) + s / 2


def _dense(input, target, score, ignore_index):
    """(dense target, kept elements or None, labelled-class mask or None). Class indices
    become the one-hot (times score) target they stand for; ignore_index drops an anchor;
    other labels outside [0, C) are background."""
    if target.dtype not in (torch.int32, torch.int64):
        return target, None, None
    C = input.shape[-1]
    cls = torch.arange(C, device=input.device)
    onehot = target.unsqueeze(-1).long() == cls  # False everywhere for labels outside [0, C)
    s = 1.0 if score is None else score.unsqueeze(-1).to(input.dtype)
    t = onehot.to(input.dtype) * s
    keep = (target != ignore_index).unsqueeze(-1)
    return t, keep, onehot


def _alpha_t(t, alpha):
    if alpha is None or alpha < 0:
        return 1
    return t * alpha + (1 - t) * (1 - alpha)


def binary_cross_entropy_with_logits(input, target, weight=None, pos_weight=None,
                                     reduction="mean", *, score=None, ignore_index=-100,
                                     label_smoothing=0.0):
    t, keep, _ = _dense(input, target, score, ignore_index)
    return _reduce(_ce(input, _smooth(t, label_smoothing), pos_weight), weight, reduction, keep)


def sigmoid_focal_loss(input, target, alpha=0.25, gamma=2.0, reduction="none", weight=None,
                       *, pos_weight=None, score=None, ignore_index=-100, label_smoothing=0.0):
    t, keep, _ = _dense(input, target, score, ignore_index)
    # 1 - p_t = p·(1 - t) + q·t with q = 1 - p = sigmoid(-x) taken directly: 1 - sigmoid(x)
    # is 0 in float64 from x = 37 on, where the loss is ~1e-17·e^-x, not 0
    p, q = torch.sigmoid(input), torch.sigmoid(-input)
    loss = (_ce(input, _smooth(t, label_smoothing), pos_weight) * _alpha_t(t, alpha)
            * (p * (1 - t) + q * t) ** gamma)
    return _reduce(loss, weight, reduction, keep)


def quality_focal_loss(input, target, gamma=2.0, alpha=None, reduction="mean", weight=None,
                       *, pos_weight=None, score=None, ignore_index=-100, label_smoothing=0.0):
    t, keep, _ = _dense(input, target, score, ignore_index)
    # t - p = t·q - (1 - t)·p, q = sigmoid(-x) (as in sigmoid_focal_loss)
    p, q = torch.sigmoid(input), torch.sigmoid(-input)
    loss = (_ce(input, _smooth(t, label_smoothing), pos_weight) * _alpha_t(t, alpha)
            * (t * q - (1 - t) * p).abs() ** gamma)
    return _reduce(loss, weight, reduction, keep)


def varifocal_loss(input, target, label=None, alpha=0.75, gamma=2.0, reduction="mean",
                   weight=None, *, pos_weight=None, score=None, ignore_index=-100,
                   label_smoothing=0.0):
    t, keep, onehot = _dense(input, target, score, ignore_index)
    p = torch.sigmoid(input)
    pos = onehot if onehot is not None else t > 0 if label is None else label.bool()
    w = torch.where(pos, t, alpha * p ** gamma)
    return _reduce(_ce(input, _smooth(t, label_smoothing), pos_weight) * w, weight, reduction, keep)


# ------------------------------------------------------------------------- box losses
def _xyxy(b, box_format):
    if box_format == "xyxy":
        return b.unbind(-1)
    cx, cy, w, h = b.unbind(-1)
    return cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5


def _aspect(w, h, eps):
    """atan(w / (h + eps)); a point box (w = h = 0) passes no gradient through it (the fused
    op's documented choice: there the formula's derivative is 1/eps)."""
    point = (w == 0) & (h == 0)
    return torch.where(point, torch.atan(w.detach() / (h.detach() + eps)), torch.atan(w / (h + eps)))


def _positive(x):
    """max(x, 0) passing the gradient only where x > 0 (torch >= 2.14's clamp rule)."""
    return torch.where(x > 0, x, torch.zeros_like(x))


def _probiou_metric(p, q, kind, eps, floor):
    """ProbIoU of xywhr pairs (arXiv 2106.06072, ultralytics' probiou), from the formula."""
    def cov(o):
        w, h, r = o[..., 2], o[..., 3], o[..., 4]
        A, B = w * w / 12 + floor, h * h / 12 + floor
        c, s = torch.cos(r), torch.sin(r)
        return A * c * c + B * s * s, A * s * s + B * c * c, (A - B) * c * s
    a1, b1, c1 = cov(p)
    a2, b2, c2 = cov(q)
    dx, dy = p[..., 0] - q[..., 0], p[..., 1] - q[..., 1]
    sa, sb, sc = a1 + a2, b1 + b2, c1 + c2
    det = sa * sb - sc * sc
    t1 = (sa * dy * dy + sb * dx * dx) / (det + eps) / 4
    t2 = -sc * dx * dy / (det + eps) / 2
    prod = _positive(a1 * b1 - c1 * c1) * _positive(a2 * b2 - c2 * c2)
    # sqrt's derivative at 0 (a singular covariance) taken as 0, not inf·0
    root = torch.where(prod > 0, prod, torch.ones_like(prod)).sqrt() * (prod > 0)
    t3 = torch.log(det / (4 * root + eps) + eps) / 2
    raw = t1 + t2 + t3
    # clamp(raw, eps, 100), the gradient passing strictly inside only
    inside = (raw > eps) & (raw < 100)
    bd = torch.where(inside, raw, raw.detach().clamp(eps, 100.0))
    iou = 1 - torch.sqrt(-torch.expm1(-bd) + eps)
    if kind == "probiou":
        return iou
    v = (4 / math.pi**2) * (torch.atan(q[..., 2] / q[..., 3]) - torch.atan(p[..., 2] / p[..., 3])) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - v * alpha


def _box_metric(a, b, kind, box_format, eps, floor=0.0):
    if kind.startswith("probiou"):
        return _probiou_metric(a, b, kind, eps, floor)
    ax1, ay1, ax2, ay2 = _xyxy(a, box_format)
    bx1, by1, bx2, by2 = _xyxy(b, box_format)
    wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    # max(overlap, 0) passing the gradient only where the overlap is > 0. (Written with where:
    # Tensor.clamp(min=0) passes it at exactly 0 in torch 2.11 and not in 2.14.)
    iw_raw = torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)
    ih_raw = torch.minimum(ay2, by2) - torch.maximum(ay1, by1)
    iw = torch.where(iw_raw > 0, iw_raw, torch.zeros_like(iw_raw))
    ih = torch.where(ih_raw > 0, ih_raw, torch.zeros_like(ih_raw))
    inter = iw * ih
    union = wa * ha + wb * hb - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        c = cw * ch + eps
        penalty = (c - union) / c
        # a zero-area enclosing box (both boxes degenerate along one axis): the penalty is 0
        # there and its derivative 1/eps (1e7: inf in fp16); the documented choice is none
        penalty = torch.where(cw * ch > 0, penalty, penalty.detach())
        return iou - penalty
    c2 = cw**2 + ch**2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    diou = iou - rho2 / c2
    if kind == "diou":
        return diou
    v = (4 / math.pi**2) * (_aspect(wb, hb, eps) - _aspect(wa, ha, eps)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return diou - alpha * v


def iou_loss(pred, target, kind="iou", box_format="xyxy", eps=1e-7, reduction="mean",
             weight=None, floor=0.0):
    return _reduce(1 - _box_metric(pred, target, kind, box_format, eps, floor), weight, reduction)


def generalized_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    return iou_loss(boxes1, boxes2, "giou", "xyxy", eps, reduction)


def distance_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    return iou_loss(boxes1, boxes2, "diou", "xyxy", eps, reduction)


def complete_box_iou_loss(boxes1, boxes2, reduction="none", eps=1e-7):
    return iou_loss(boxes1, boxes2, "ciou", "xyxy", eps, reduction)


def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):  # noqa: N803
    kind = "ciou" if CIoU else "diou" if DIoU else "giou" if GIoU else "iou"
    return _box_metric(box1, box2, kind, "xywh" if xywh else "xyxy", eps).unsqueeze(-1)


def box_iou_matrix(boxes1, boxes2, kind="iou", box_format="xyxy", eps=1e-7, floor=0.0):
    if not boxes1.is_floating_point():
        boxes1 = boxes1.float()
    if not boxes2.is_floating_point():
        boxes2 = boxes2.float()
    return _box_metric(boxes1.unsqueeze(-2), boxes2.unsqueeze(-3), kind, box_format, eps, floor)


def probiou(obb1, obb2, CIoU=False, eps=1e-7, floor=0.0):  # noqa: N803
    return _probiou_metric(obb1, obb2, "probiou_ciou" if CIoU else "probiou", eps,
                           floor).unsqueeze(-1)


def probiou_loss(pred, target, CIoU=False, eps=1e-7, floor=0.0, reduction="mean",  # noqa: N803
                 weight=None):
    return iou_loss(pred, target, "probiou_ciou" if CIoU else "probiou", "xywhr", eps, reduction,
                    weight, floor)


# ------------------------------------------------------------------- distribution (DFL)
def distribution_focal_loss(pred, target, reduction="mean", weight=None):
    bins = pred.shape[-1]
    y = target.to(torch.promote_types(pred.dtype, torch.float32))
    nan = torch.isnan(y)
    y = y.nan_to_num(0.0).clamp(0, bins - 1 - 0.01)
    left = y.floor()
    wl = left + 1 - y
    wr = y - left
    logp = torch.log_softmax(pred.to(y.dtype), dim=-1)
    li = left.long().unsqueeze(-1)
    loss = -(wl * logp.gather(-1, li).squeeze(-1) + wr * logp.gather(-1, li + 1).squeeze(-1))
    # a NaN target: NaN loss and NaN gradient for its row only
    loss = loss * torch.where(nan, float("nan"), 1.0).to(loss.dtype)
    return _reduce(loss.to(pred.dtype), weight, reduction)


def distribution_integral(pred):
    bins = pred.shape[-1]
    proj = torch.arange(bins, dtype=pred.dtype, device=pred.device)
    return torch.softmax(pred, dim=-1) @ proj


# ----------------------------------------------------------------------------- assigner
def _ultralytics_ciou(b1, b2, eps=1e-7):
    """ultralytics' bbox_iou(b1, b2, xywh=False, CIoU=True): heights + eps, its order."""
    x1, y1, x2, y2 = b1.unbind(-1)
    u1, v1, u2, v2 = b2.unbind(-1)
    w1, h1 = x2 - x1, y2 - y1 + eps
    w2, h2 = u2 - u1, v2 - v1 + eps
    inter = ((x2.minimum(u2) - x1.maximum(u1)).clamp(min=0) *
             (y2.minimum(v2) - y1.maximum(v1)).clamp(min=0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = x2.maximum(u2) - x1.minimum(u1)
    ch = y2.maximum(v2) - y1.minimum(v1)
    c2 = cw.pow(2) + ch.pow(2) + eps
    rho2 = ((u1 + u2 - x1 - x2).pow(2) + (v1 + v2 - y1 - y2).pow(2)) / 4
    v = (4 / math.pi**2) * ((w2 / h2).atan() - (w1 / h1).atan()).pow(2)
    a = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * a)


def task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                        topk=13, num_classes=80, alpha=1.0, beta=6.0, stride_val=16.0,
                        eps=1e-9, topk2=None):
    """ultralytics' TaskAlignedAssigner written out with dense (B, M, A) tensors: candidates,
    CIoU overlaps, metric, top-k with ties to the lower anchor index (a stable sort: the
    fused assigner's rule), conflicts to the box of largest overlap, topk2, normalisation.
    Returns (target_labels, target_bboxes, target_scores [B, A, C], fg_mask, target_gt_idx).
    Probabilities in (pd_scores, not logits); boxes xyxy."""
    B, A, C = pd_scores.shape
    M = gt_bboxes.shape[1]
    topk2 = topk2 or topk
    dt = torch.promote_types(pd_bboxes.dtype, gt_bboxes.dtype)
    labels = gt_labels.long().view(B, M)
    valid = (mask_gt.view(B, M) != 0)
    gt = gt_bboxes.to(dt)
    # candidates: the anchor strictly inside the box, its sides raised to stride_val
    cxy, wh = (gt[..., :2] + gt[..., 2:]) / 2, gt[..., 2:] - gt[..., :2]
    wh = torch.where(valid.unsqueeze(-1), wh.clamp(min=stride_val), wh)
    lt, rb = cxy - wh / 2, cxy + wh / 2
    a = anc_points.to(dt).view(1, 1, A, 2)
    inside = torch.cat([a - lt.unsqueeze(2), rb.unsqueeze(2) - a], -1).amin(-1) > 1e-9
    cand = inside & valid.unsqueeze(-1)
    # overlaps and metric
    ov = torch.zeros(B, M, A, dtype=dt, device=pd_scores.device)
    pairs = cand.nonzero(as_tuple=True)
    ov[pairs] = _ultralytics_ciou(gt[pairs[0], pairs[1]], pd_bboxes.to(dt)[pairs[0], pairs[2]]).clamp(min=0)
    score = pd_scores.gather(2, labels.clamp(0, C - 1).unsqueeze(1).expand(B, A, M)).transpose(1, 2)
    # (the score's power in the scores' dtype, as torch evaluates ultralytics' expression)
    metric = torch.where(cand, (score ** alpha).to(dt) * ov ** beta, torch.zeros_like(ov))

    def top(metric, k, allowed):
        """Per box, its k best anchors over all anchors (ties: lower index), kept if allowed."""
        order = torch.sort(metric, dim=-1, descending=True, stable=True).indices[..., :k]
        sel = torch.zeros_like(allowed).scatter_(-1, order, True)
        return sel & allowed

    pos = top(metric, topk, cand)
    count = pos.sum(1)  # boxes per anchor
    best = ov.argmax(1)  # the first box of largest overlap
    multi = count > 1
    pos = torch.where(multi.unsqueeze(1),
                      torch.nn.functional.one_hot(best, M).transpose(1, 2).bool(), pos)
    if topk2 != topk:
        pos = top(torch.where(pos, metric, torch.zeros_like(metric)), topk2, pos)
    fg = pos.any(1)
    gt_idx = pos.to(torch.uint8).argmax(1)
    b = torch.arange(B, device=pd_scores.device).unsqueeze(-1)
    t_labels = labels[b, gt_idx].clamp(min=0)
    t_boxes = gt_bboxes[b, gt_idx]
    metric = metric * pos
    ovm = ov * pos
    norm = (metric * ovm.amax(-1, keepdim=True) / (metric.amax(-1, keepdim=True) + eps)).amax(1)
    t_scores = torch.nn.functional.one_hot(t_labels, num_classes) * (norm * fg).unsqueeze(-1)
    return t_labels, t_boxes, t_scores, fg, gt_idx


def prototype_mask_loss(coef, proto, batch_index, boxes, area, masks, mask_index, overlap=True,
                        reduction="mean", positive=None):
    """ultralytics' single_mask_loss for every positive at once: the (P, H, W) logits, the
    target masks, the BCE, crop_mask's product, mean / area."""
    lead = coef.shape[:-1]
    keep = torch.ones(lead, dtype=torch.bool) if positive is None else positive.cpu()
    keep = keep.reshape(-1)
    coef = coef.reshape(-1, coef.shape[-1])
    b = batch_index.reshape(-1).long()[keep]
    i = mask_index.reshape(-1).long()[keep]
    boxes, area = boxes.reshape(-1, 4)[keep], area.reshape(-1)[keep]
    H, W = proto.shape[-2:]
    z = torch.einsum("pn,pnhw->phw", coef[keep], proto[b])
    if overlap:
        t = (masks[b] == (i + 1).view(-1, 1, 1)).to(z.dtype)
    else:
        t = masks[i].to(z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    x1, y1, x2, y2 = boxes[:, :, None].chunk(4, 1)
    r = torch.arange(W, device=z.device, dtype=boxes.dtype)[None, None, :]
    c = torch.arange(H, device=z.device, dtype=boxes.dtype)[None, :, None]
    loss = loss * ((r >= x1) * (r < x2)) * ((c >= y1) * (c < y2))
    per = loss.mean(dim=(1, 2)) / area
    if reduction == "none":
        return per.new_zeros(keep.shape).masked_scatter(keep, per).view(lead)
    s = per.sum()
    n = int(keep.sum())
    return s / n if reduction == "mean" and n > 0 else s
