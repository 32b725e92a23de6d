"""Hugging Face transformers' DETR-family losses on detloss_cuda's fused kernels.

    import detloss_cuda.integrations.transformers as dl
    dl.patch()                  # DETR, Deformable DETR, RT-DETR, D-FINE, LW-DETR, RF-DETR, ...
    dl.unpatch()                # the originals, the very same objects
    with dl.patched(): ...

What is routed (``transformers.loss.*``; wrapping the library's own functions and methods;
calls the fused ops would treat differently go to the library's code):

* ``sigmoid_focal_loss(inputs, targets, num_boxes, alpha, gamma)`` of
  ``loss_for_object_detection`` (and the modules that import it: Deformable DETR, RT-DETR,
  LW-DETR; Grounding DINO's own variant too): the fused focal loss, summed in the kernel
  (``loss.mean(1).sum()`` is the sum over ``inputs.shape[1]``), no ``[B, Q, C]`` loss tensor;
* the Hungarian matchers' ``forward``: ``HungarianMatcher`` (DETR: the softmax class cost),
  ``DeformableDetrHungarianMatcher``, ``RTDetrHungarianMatcher`` (the focal cost, or the
  softmax one without ``use_focal_loss``) and ``LwDetrHungarianMatcher`` (the focal cost, each
  query group solved apart), each the exact class: the cost of each image's queries against
  its own targets only, one kernel (``detloss_cuda.match.detr_match_cost``), one host copy of
  those blocks, SciPy's ``linear_sum_assignment`` on each (the library builds and copies the
  ``(B·Q) × ΣT`` cost of every query against every target of the batch);
* ``generalized_box_iou(boxes1, boxes2)`` where no gradient is needed (the other matchers'
  GIoU cost, under ``torch.no_grad``): ``box_iou_matrix(kind='giou')``, one forward-only
  kernel for the ``N x M`` matrix;
* ``loss_boxes`` of ``ImageLoss`` (DETR, Deformable DETR, Grounding DINO, ...),
  ``RTDetrLoss`` (RT-DETR, D-FINE, DEIMv2) and ``LwDetrImageLoss`` (LW-DETR, RF-DETR): the
  library takes ``1 - diag(generalized_box_iou(a, b))``, an ``N x N`` matrix for ``N``
  matched pairs, differentiated; here the pairwise GIoU loss, O(N), with the same L1 term;
* ``RTDetrLoss.loss_labels_vfl``: the matched queries' IoU (pairwise, not the diagonal of an
  ``N x N`` matrix) and the fused BCE with class-index targets and ``score`` = IoU, weighted
  as the library weights it (``alpha·sigmoid(x)^gamma`` on negatives, the IoU on positives,
  detached): no one-hot, target or target-score ``[B, Q, C]`` tensor;
* ``Deimv2Loss.loss_labels_mal`` (DEIMv2's matchability-aware loss): likewise, ``score`` =
  IoU^gamma, weight 1 on positives and ``mal_alpha·sigmoid(x)^gamma`` (detached) elsewhere;
* ``DFineLoss.loss_local`` (D-FINE, DEIMv2): FGL on the DFL kernel with the library's left
  bins and right weights (``distribution_focal_loss(..., weight_right=)``: one pass a row
  where the library runs two cross-entropies), DDF's distillation KL of every query's edge
  distributions on ``distribution_kl_loss`` (one kernel, no ``[B·Q·4, R]`` softmax /
  log-softmax / KL tensors); the weights and masked means stay the library's;
* ``RfDetrHungarianMatcher`` (RF-DETR segmentation): the box and class part as LW-DETR's,
  the mask part (point sampling, pair-wise sigmoid-CE and dice) the library's own lines,
  each image's block of it added before the NaN/inf replacement.

The library's own formulas have no ``eps``: the fused ops run with ``eps=0`` (degenerate
boxes give the same NaN/inf). fp16/bf16 boxes (AMP) go to the library's code, which mixes
half-precision intersections with float32 areas. Values and gradients equal the library's up to float32
rounding (``tests/test_integrations.py``: DETR, Deformable DETR and RT-DETR training steps).
"""
import functools

import torch
import torch.nn.functional as F

from .. import functional as DF
from .. import match as DM
from ._patching import Switch, is_number, load_library, ours

KNOWN = "transformers 5.x (tested with 5.24.0)"

_MODULES = {
    "od": "transformers.loss.loss_for_object_detection",
    "rt_detr": "transformers.loss.loss_rt_detr",
    "deformable_detr": "transformers.loss.loss_deformable_detr",
    "lw_detr": "transformers.loss.loss_lw_detr",
    "rf_detr": "transformers.loss.loss_rf_detr",
    "grounding_dino": "transformers.loss.loss_grounding_dino",
    "deimv2": "transformers.loss.loss_deimv2",
    "d_fine": "transformers.loss.loss_d_fine",
    "image_transforms": "transformers.image_transforms",
}


def _load():
    ps = load_library("transformers", tuple(_MODULES.values()), KNOWN)
    ps.mods = {short: ps.mods[full] for short, full in _MODULES.items()}
    return ps


def _focal_ok(inputs, targets, alpha, gamma, min_dim):
    """`min_dim`: 2 for the mean over dim 1; 1 for Grounding DINO's plain sum, which
    transformers calls with the 1-D masked_select of the logits and targets."""
    return (isinstance(inputs, torch.Tensor) and isinstance(targets, torch.Tensor)
            and ours(inputs, targets) and inputs.dtype == targets.dtype
            and inputs.shape == targets.shape and inputs.dim() >= min_dim
            and not targets.requires_grad
            and is_number(alpha) and alpha <= 1 and is_number(gamma) and gamma >= 0)


def _wrap_focal_mean1(orig):
    """transformers' ``sigmoid_focal_loss``: ``loss.mean(1).sum() / num_boxes``."""
    @functools.wraps(orig)
    def sigmoid_focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2):
        if not _focal_ok(inputs, targets, alpha, gamma, 2):
            return orig(inputs, targets, num_boxes, alpha, gamma)
        total = DF.sigmoid_focal_loss(inputs, targets, alpha=alpha if alpha >= 0 else None,
                                      gamma=gamma, reduction="sum")
        return total / inputs.shape[1] / num_boxes
    return sigmoid_focal_loss


def _wrap_focal_sum(orig):
    """Grounding DINO's ``sigmoid_focal_loss``: ``loss.sum() / num_boxes``."""
    @functools.wraps(orig)
    def sigmoid_focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2):
        if not _focal_ok(inputs, targets, alpha, gamma, 1):
            return orig(inputs, targets, num_boxes, alpha, gamma)
        return DF.sigmoid_focal_loss(inputs, targets, alpha=alpha if alpha >= 0 else None,
                                     gamma=gamma, reduction="sum") / num_boxes
    return sigmoid_focal_loss


def _boxes_ok(a, b):
    """Boxes the fused path reproduces: float32/float64 [N, 4]. (fp16/bf16 boxes go to the
    library: it forms their intersections and enclosing boxes in half precision and their
    areas in float32, a mix a float32 kernel does not round like.)"""
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and ours(a, b)
            and a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64)
            and a.dim() == 2 and b.dim() == 2 and a.shape[1] == 4 and b.shape[1] == 4)


def _check_corners(a, b):
    """generalized_box_iou's own check and message (a host synchronisation, as there)."""
    if not (a[:, 2:] >= a[:, :2]).all():
        raise ValueError(f"boxes1 must be in [x0, y0, x1, y1] (corner) format, but got {a}")
    if not (b[:, 2:] >= b[:, :2]).all():
        raise ValueError(f"boxes2 must be in [x0, y0, x1, y1] (corner) format, but got {b}")


def _wrap_giou_matrix(orig):
    @functools.wraps(orig)
    def generalized_box_iou(boxes1, boxes2):
        if not _boxes_ok(boxes1, boxes2) or (
                torch.is_grad_enabled() and (boxes1.requires_grad or boxes2.requires_grad)):
            return orig(boxes1, boxes2)  # differentiated: the library's (loss_boxes is ours)
        _check_corners(boxes1, boxes2)
        return DF.box_iou_matrix(boxes1, boxes2, "giou", eps=0.0)
    return generalized_box_iou


def _matcher_inputs(outputs, targets, to_corners, float32_only=False, classes=None):
    """(logits, pred_boxes, labels, boxes, sizes) of a matcher call the fused cost reproduces:
    logits and boxes of one dtype, float32 or float64 (float32 only where the library's L1 is
    a float32 cdist whatever the dtype: LW-DETR), integer labels in [0, C) (``classes(sizes)``:
    each target's class count where it is not C, a [T] tensor), corners valid; else None
    (the library's code runs, with its own errors)."""
    if not isinstance(outputs, dict) or not isinstance(targets, (list, tuple)):
        return None
    logits, pb = outputs.get("logits"), outputs.get("pred_boxes")
    if not (isinstance(logits, torch.Tensor) and isinstance(pb, torch.Tensor)) or logits.dim() != 3 \
            or pb.shape != (*logits.shape[:2], 4) or len(targets) != logits.shape[0]:
        return None
    try:
        labels = torch.cat([t["class_labels"] for t in targets])
        boxes = torch.cat([t["boxes"] for t in targets])
        sizes = [len(t["boxes"]) for t in targets]
    except (KeyError, TypeError, RuntimeError, IndexError):
        return None
    dtypes = (torch.float32,) if float32_only else (torch.float32, torch.float64)
    if (not ours(logits, pb, boxes) or type(labels) is not torch.Tensor
            or labels.device != logits.device or logits.dtype not in dtypes
            or pb.dtype != logits.dtype or boxes.dtype != logits.dtype or labels.is_floating_point()
            or labels.dtype == torch.bool or boxes.dim() != 2 or boxes.shape[1] != 4
            or labels.shape != (boxes.shape[0],)):
        return None
    # the library's checks, in one host read (the library reads twice: generalized_box_iou's
    # corner checks): a label outside [0, C) (its index error), invalid corners (its ValueError)
    c1, c2 = to_corners(pb.flatten(0, 1)), to_corners(boxes)
    limit = logits.shape[-1] if classes is None else classes(sizes)
    ok = (((labels >= 0) & (labels < limit)).all() & (c1[:, 2:] >= c1[:, :2]).all()
          & (c2[:, 2:] >= c2[:, :2]).all())
    if not ok:
        return None
    return logits, pb, labels, boxes, sizes


def _wrap_matcher(orig, cls, to_corners, kind):
    """A Hungarian matcher's forward (the exact class) on the fused per-image cost and one host
    copy of the blocks (detloss_cuda.match); kind(self) -> (class_kind, alpha, gamma)."""
    @functools.wraps(orig)
    def forward(self, outputs, targets):
        got = _matcher_inputs(outputs, targets, to_corners) if type(self) is cls else None
        if got is None:
            return orig(self, outputs, targets)
        logits, pb, labels, boxes, sizes = got
        class_kind, alpha, gamma = kind(self)
        with torch.no_grad():
            cost = DM.detr_match_cost(logits, pb, labels, boxes, sizes, class_cost=self.class_cost,
                                      bbox_cost=self.bbox_cost, giou_cost=self.giou_cost,
                                      class_kind=class_kind, alpha=alpha, gamma=gamma)
        return DM.solve(cost, sizes)
    return forward


def _wrap_group_matcher(orig, cls, to_corners):
    """LW-DETR's matcher: the focal cost (alpha 0.25, gamma 2), each query group solved apart."""
    @functools.wraps(orig)
    def forward(self, outputs, targets, group_detr):
        got = (_matcher_inputs(outputs, targets, to_corners, float32_only=True)
               if type(self) is cls and isinstance(group_detr, int) and group_detr >= 1 else None)
        if got is None:
            return orig(self, outputs, targets, group_detr)
        logits, pb, labels, boxes, sizes = got
        with torch.no_grad():
            cost = DM.detr_match_cost(logits, pb, labels, boxes, sizes, class_cost=self.class_cost,
                                      bbox_cost=self.bbox_cost, giou_cost=self.giou_cost,
                                      class_kind="focal", alpha=0.25, gamma=2.0)
        return DM.solve(cost, sizes, groups=group_detr)
    return forward


def _blocks(full, sizes, B, Q):
    """Each image's block of a library cost ``[B·Q, ΣT]`` (every query against every target of
    the batch), as ``[B, Q, max T]`` with the padding 0 (detr_match_cost's layout)."""
    full = full.view(B, Q, full.shape[-1])
    out = full.new_zeros(B, Q, max(sizes, default=0))
    start = 0
    for b, n in enumerate(sizes):
        out[b, :, :n] = full[b, :, start:start + n]
        start += n
    return out


def _wrap_rf_matcher(orig, cls, mod, to_corners):
    """RF-DETR's segmentation matcher: the box and class part as LW-DETR's (the fused
    per-image cost), the mask part the library's own lines (``mod``'s sample_point and
    pair-wise sigmoid-CE and dice, on its one torch.rand draw of points: the same draw, every
    query against every target as there), each image's block of it added in the library's
    order, then its nan_to_num, the groups solved apart."""
    @functools.wraps(orig)
    def forward(self, outputs, targets, group_detr):
        got = None
        if type(self) is cls and isinstance(group_detr, int) and group_detr >= 1:
            got = _matcher_inputs(outputs, targets, to_corners, float32_only=True)
        if got is not None:
            pm = outputs.get("pred_masks")
            masks = [t.get("masks") for t in targets]
            if not (type(pm) is torch.Tensor and pm.dtype == torch.float32 and pm.dim() == 4
                    and pm.shape[:2] == got[0].shape[:2] and pm.device == got[0].device
                    and all(type(m) is torch.Tensor and m.dim() == 3 and m.device == pm.device
                            and m.shape[1:] == masks[0].shape[1:] for m in masks)
                    and [len(m) for m in masks] == got[4]):
                got = None
        if got is None:
            return orig(self, outputs, targets, group_detr)
        logits, pb, labels, boxes, sizes = got
        B, Q = logits.shape[:2]
        with torch.no_grad():
            cost = DM.detr_match_cost(logits, pb, labels, boxes, sizes, class_cost=self.class_cost,
                                      bbox_cost=self.bbox_cost, giou_cost=self.giou_cost,
                                      class_kind="focal", alpha=0.25, gamma=2.0)
            # the library's mask lines (its point count: the flattened boxes' [B·Q, 4] shape)
            out_masks = pm.flatten(0, 1)
            target_masks = torch.cat(masks)
            height, width = pb.flatten(0, 1).shape[:2]
            num_points = height * width // self.mask_point_sample_ratio
            point_coords = torch.rand(1, num_points, 2, device=out_masks.device)
            pred_point_coords = point_coords.repeat(out_masks.shape[0], 1, 1)
            pred_masks_logits = mod.sample_point(out_masks.unsqueeze(1), pred_point_coords,
                                                 align_corners=False)
            pred_masks_logits = torch.squeeze(pred_masks_logits, (-1, 1))
            target_masks = target_masks.to(out_masks.dtype).unsqueeze(1)
            target_point_coords = point_coords.repeat(target_masks.shape[0], 1, 1)
            target_masks = mod.sample_point(target_masks, target_point_coords, align_corners=False,
                                            mode="nearest")
            target_masks = torch.squeeze(target_masks, (-1, 1))
            mask_ce = mod.pair_wise_sigmoid_cross_entropy_loss(pred_masks_logits, target_masks)
            mask_dice = mod.pair_wise_dice_loss(pred_masks_logits, target_masks)
            # the library adds these after the box and class terms, then replaces NaN/inf; the
            # fused cost has replaced them already: a replaced entry (the largest float) plus a
            # finite mask cost stays the largest, and a non-finite sum is replaced below
            cost = cost + _blocks(self.cost_mask_class * mask_ce, sizes, B, Q)
            cost = cost + _blocks(self.cost_mask_dice * mask_dice, sizes, B, Q)
            big = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
        return DM.solve(cost, sizes, groups=group_detr)
    return forward


def _grounding_class_cost(logits, label_maps, targets, sizes):
    """Grounding DINO's class cost, per image: the focal cost of each text token (its lines, on
    [B, Q, K]) times each target's label map normalised over its tokens, ``[B, Q, max T]``
    by one batched matmul of each image's rows (the library: ``[B·Q, K] @ [K, ΣT]``, every
    query against every target of the batch); None where the library's own dtype rules
    would not give one matmul dtype (it raises there)."""
    prob = logits.sigmoid()
    alpha, gamma = 0.25, 2.0
    neg = (1 - alpha) * (prob ** gamma) * (-(1 - prob + 1e-8).log())
    pos = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
    maps = [lm[t["class_labels"]] for lm, t in zip(label_maps, targets)]
    maps = [m / m.sum(dim=-1, keepdim=True) for m in maps]  # the library's normalisation, by row
    if any(m.dtype != logits.dtype for m in maps):
        return None
    padded = logits.new_zeros(logits.shape[0], max(sizes, default=0), logits.shape[-1])
    for b, m in enumerate(maps):
        padded[b, :len(m)] = m
    return torch.bmm(pos - neg, padded.transpose(1, 2))


def _wrap_grounding_matcher(orig, cls, to_corners):
    """Grounding DINO's matcher: the class cost from text-token label maps
    (_grounding_class_cost, per image), given to the fused cost with the L1 and GIoU terms
    (``class_kind='given'``), the blocks solved as the other matchers'."""
    @functools.wraps(orig)
    def forward(self, outputs, targets):
        maps = outputs.get("label_maps") if isinstance(outputs, dict) else None
        got = None
        if (type(self) is cls and isinstance(maps, (list, tuple)) and isinstance(targets, (list, tuple))
                and len(maps) == len(targets)
                and all(type(m) is torch.Tensor and m.dim() == 2 for m in maps)):
            logits = outputs.get("logits")

            def classes(sizes):  # each target's image's class count (the label map's rows)
                n = torch.tensor([m.shape[0] for m in maps])
                return n.repeat_interleave(torch.tensor(sizes)).to(logits.device)

            got = _matcher_inputs(outputs, targets, to_corners, classes=classes)
            if got is not None and (any(m.device != got[0].device for m in maps)
                                    or any(m.shape[1] != got[0].shape[-1] for m in maps)):
                got = None
        if got is None:
            return orig(self, outputs, targets)
        logits, pb, labels, boxes, sizes = got
        with torch.no_grad():
            class_cost = _grounding_class_cost(logits, maps, targets, sizes)
            if class_cost is None:
                return orig(self, outputs, targets)
            cost = DM.detr_match_cost(class_cost, pb, labels, boxes, sizes,
                                      class_cost=self.class_cost, bbox_cost=self.bbox_cost,
                                      giou_cost=self.giou_cost, class_kind="given")
        return DM.solve(cost, sizes)
    return forward


def _matched(self, outputs, targets, indices):
    idx = self._get_source_permutation_idx(indices)
    src = outputs["pred_boxes"][idx]
    tgt = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
    return idx, src, tgt


def _wrap_loss_boxes(orig, to_corners):
    @functools.wraps(orig)
    def loss_boxes(self, outputs, targets, indices, num_boxes):
        if "pred_boxes" not in outputs:
            return orig(self, outputs, targets, indices, num_boxes)  # its KeyError
        _, src, tgt = _matched(self, outputs, targets, indices)
        a, b = to_corners(src), to_corners(tgt)
        if not _boxes_ok(a, b):
            return orig(self, outputs, targets, indices, num_boxes)
        losses = {"loss_bbox": F.l1_loss(src, tgt, reduction="none").sum() / num_boxes}
        _check_corners(a, b)
        # 1 - diag(GIoU matrix) summed: the pairwise GIoU loss of the matched pairs
        giou = DF.generalized_box_iou_loss(a, b, reduction="sum", eps=0.0)
        losses["loss_giou"] = giou / num_boxes
        return losses
    return loss_boxes


def _class_targets(self, outputs, targets, indices, to_corners):
    """What VFL and MAL build their targets from: the matched queries ``idx``, their IoU with
    their targets (the library's: pairwise, no eps, detached; not the diagonal of an N x N
    matrix), their classes, and every query's class index ``[B, Q]`` (``num_classes`` where
    unmatched: background); None where the fused path does not take these boxes or logits."""
    idx, src_boxes, target_boxes = _matched(self, outputs, targets, indices)
    logits = outputs["logits"]
    a, b = to_corners(src_boxes.detach()), to_corners(target_boxes)
    if not _boxes_ok(a, b) or not ours(logits) or logits.dim() != 3:
        return None
    with torch.no_grad():
        ious = 1 - DF.iou_loss(a, b, "iou", eps=0.0, reduction="none")
    matched = torch.cat([t["class_labels"][i] for t, (_, i) in zip(targets, indices)])
    classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
    classes[idx] = matched
    return idx, ious, matched, classes


def _wrap_loss_labels_vfl(orig, to_corners):
    @functools.wraps(orig)
    def loss_labels_vfl(self, outputs, targets, indices, num_boxes, log=True):
        got = None
        if ("pred_boxes" in outputs and "logits" in outputs and is_number(self.alpha)
                and is_number(self.gamma)):
            got = _class_targets(self, outputs, targets, indices, to_corners)
        if got is None:
            return orig(self, outputs, targets, indices, num_boxes, log)
        idx, ious, matched, classes = got
        src_logits = outputs["logits"]
        dtype = src_logits.dtype
        score = torch.zeros(src_logits.shape[:2], dtype=dtype, device=src_logits.device)
        score[idx] = ious.to(dtype)
        # alpha·p^gamma on negatives, the IoU on each matched query's class (detached, as there)
        weight = (self.alpha * torch.sigmoid(src_logits.detach()).pow(self.gamma)).to(dtype)
        weight[idx + (matched,)] = ious.to(dtype)
        loss = DF.binary_cross_entropy_with_logits(src_logits, classes, weight=weight,
                                                   score=score, reduction="sum")
        # the library: loss.mean(1).sum() * Q / num_boxes = the sum / num_boxes
        return {"loss_vfl": loss / num_boxes}
    return loss_labels_vfl


def _wrap_loss_labels_mal(orig, to_corners):
    """DEIMv2's matchability-aware loss: BCE towards IoU^gamma on each matched query's class,
    weighted 1 there and ``mal_alpha·sigmoid(x)^gamma`` (detached) elsewhere: the fused BCE
    with class-index targets and that score; no one-hot, target or target-score [B, Q, C]."""
    @functools.wraps(orig)
    def loss_labels_mal(self, outputs, targets, indices, num_boxes):
        alpha, got = self.mal_alpha, None
        if ("pred_boxes" in outputs and "logits" in outputs and is_number(self.gamma)
                and (alpha is None or is_number(alpha))
                and getattr(outputs["logits"], "dtype", None) in (torch.float32, torch.float64)):
            got = _class_targets(self, outputs, targets, indices, to_corners)
        if got is None:
            return orig(self, outputs, targets, indices, num_boxes)
        idx, ious, matched, classes = got
        src_logits = outputs["logits"]
        score = torch.zeros(src_logits.shape[:2], dtype=src_logits.dtype, device=src_logits.device)
        score[idx] = ious.to(src_logits.dtype).pow(self.gamma)
        weight = torch.sigmoid(src_logits.detach()).pow(self.gamma)
        if alpha is not None:
            weight = alpha * weight
        weight[idx + (matched,)] = 1
        loss = DF.binary_cross_entropy_with_logits(src_logits, classes, weight=weight,
                                                   score=score, reduction="sum")
        # the library: loss.mean(1).sum() * Q / num_boxes = the sum / num_boxes
        return {"loss_mal": loss / num_boxes}
    return loss_labels_mal


def _wrap_loss_local(orig, mod, to_corners, fgl):
    """D-FINE's (and DEIMv2's) ``loss_local``: FGL (``fgl``: the library's
    ``unimodal_distribution_focal_loss``, two cross-entropies a row) on the DFL kernel with
    translate_gt's left bins and right weights, DDF's KL of every query's edge distributions
    against the last layer's on the fused distillation KL (``distribution_kl_loss``: no
    ``[B·Q·4, R]`` softmax, log-softmax or KL tensors), then the library's weighting and
    masked means. ``mod``: the library's module (its bbox2distance and box_iou, looked up at
    call time)."""
    @functools.wraps(orig)
    def loss_local(self, outputs, targets, indices, num_boxes, T=5):
        pc, tc = outputs.get("pred_corners"), outputs.get("teacher_corners")
        if (pc is None or tc is None or "teacher_logits" not in outputs
                or not ours(pc, tc) or pc.shape != tc.shape
                or pc.dtype not in (torch.float32, torch.float64) or not is_number(T) or T <= 0):
            return orig(self, outputs, targets, indices, num_boxes, T)
        losses = {}
        R = self.max_num_bins + 1
        idx = self._get_source_permutation_idx(indices)
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        # FGL: the library's lines
        pred_corners = pc[idx].reshape(-1, R)
        ref_points = outputs["ref_points"][idx].detach()
        with torch.no_grad():
            self.fgl_targets = mod.bbox2distance(ref_points, to_corners(target_boxes),
                                                 self.max_num_bins, self.reg_scale, self.up)
        target_corners, weight_right, weight_left = self.fgl_targets
        ious = torch.diag(mod.box_iou(to_corners(outputs["pred_boxes"][idx]),
                                      to_corners(target_boxes))[0])
        weight_targets = ious.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach()
        if (type(self).unimodal_distribution_focal_loss is fgl
                and torch.equal(weight_left, 1 - weight_right)):
            # wl·CE(l) + wr·CE(l + 1) per edge, weighted by its IoU (float32, as the library's
            # weight.float()), summed, over num_boxes: the DFL kernel with the given left bins
            # and right weights (translate_gt's; wl = 1 - wr as it computes them)
            losses["loss_fgl"] = DF.distribution_focal_loss(
                pred_corners, target_corners, "sum", weight_targets.float(),
                weight_right=weight_right) / num_boxes
        else:
            losses["loss_fgl"] = self.unimodal_distribution_focal_loss(
                pred_corners, target_corners, weight_right, weight_left, weight_targets,
                avg_factor=num_boxes)
        # DDF
        pred_corners, target_corners = pc.reshape(-1, R), tc.reshape(-1, R)
        if torch.equal(pred_corners, target_corners):
            losses["loss_ddf"] = pred_corners.sum() * 0
            return losses
        weight_targets_local = outputs["teacher_logits"].sigmoid().max(dim=-1)[0]
        mask = torch.zeros_like(weight_targets_local, dtype=torch.bool)
        mask[idx] = True
        mask = mask.unsqueeze(-1).repeat(1, 1, 4).reshape(-1)
        weight_targets_local[idx] = ious.reshape_as(weight_targets_local[idx]).to(weight_targets_local.dtype)
        weight_targets_local = weight_targets_local.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach()
        # T²·KL(softmax(teacher/T) || softmax(pred/T)) per edge, in one kernel
        loss_match_local = weight_targets_local * DF.distribution_kl_loss(
            pred_corners, target_corners.detach(), float(T))
        batch_scale = 1 / outputs["pred_boxes"].shape[0]
        self.num_pos, self.num_neg = ((mask.sum() * batch_scale) ** 0.5,
                                      ((~mask).sum() * batch_scale) ** 0.5)
        loss_match_local1 = loss_match_local[mask].mean() if mask.any() else 0
        loss_match_local2 = loss_match_local[~mask].mean() if (~mask).any() else 0
        losses["loss_ddf"] = (loss_match_local1 * self.num_pos + loss_match_local2 * self.num_neg) / (
            self.num_pos + self.num_neg)
        return losses
    return loss_local


def _apply(ps):
    m = ps.mods
    to_corners = ps.original(m["image_transforms"], "center_to_corners_format")
    plan = []
    focal = ps.original(m["od"], "sigmoid_focal_loss", "loss_for_object_detection.sigmoid_focal_loss")
    for short in ("od", "rt_detr", "deformable_detr", "lw_detr"):
        found = ps.original(m[short], "sigmoid_focal_loss")
        if found is not focal:
            raise RuntimeError(f"detloss_cuda.integrations.transformers: {m[short].__name__}."
                               "sigmoid_focal_loss is not loss_for_object_detection's; "
                               f"it knows {KNOWN}. Nothing was patched.")
        plan.append((m[short], "sigmoid_focal_loss", _wrap_focal_mean1(found)))
    plan.append((m["grounding_dino"], "sigmoid_focal_loss",
                 _wrap_focal_sum(ps.original(m["grounding_dino"], "sigmoid_focal_loss"))))
    for short in ("od", "rt_detr", "deformable_detr", "lw_detr", "rf_detr", "grounding_dino"):
        plan.append((m[short], "generalized_box_iou",
                     _wrap_giou_matrix(ps.original(m[short], "generalized_box_iou"))))
    for short, cls in (("od", "ImageLoss"), ("rt_detr", "RTDetrLoss"), ("lw_detr", "LwDetrImageLoss")):
        owner = ps.original(m[short], cls)
        plan.append((owner, "loss_boxes", _wrap_loss_boxes(ps.original(owner, "loss_boxes"), to_corners)))
    rt = ps.original(m["rt_detr"], "RTDetrLoss")
    plan.append((rt, "loss_labels_vfl",
                 _wrap_loss_labels_vfl(ps.original(rt, "loss_labels_vfl"), to_corners)))
    dfine = ps.original(m["d_fine"], "DFineLoss")
    for name in ("bbox2distance", "box_iou"):
        ps.original(m["d_fine"], name)  # loss_local reads them: they must exist
    plan.append((dfine, "loss_local",
                 _wrap_loss_local(ps.original(dfine, "loss_local"), m["d_fine"], to_corners,
                                  ps.original(dfine, "unimodal_distribution_focal_loss"))))
    deim = ps.original(m["deimv2"], "Deimv2Loss")
    plan.append((deim, "loss_labels_mal",
                 _wrap_loss_labels_mal(ps.original(deim, "loss_labels_mal"), to_corners)))
    # the Hungarian matchers (each exact class)
    for short, name, kind in (
            ("od", "HungarianMatcher", lambda self: ("softmax", 0.25, 2.0)),
            ("deformable_detr", "DeformableDetrHungarianMatcher", lambda self: ("focal", 0.25, 2.0)),
            ("rt_detr", "RTDetrHungarianMatcher",
             lambda self: ("focal", float(self.alpha), float(self.gamma)) if self.use_focal_loss
             else ("softmax", 0.25, 2.0))):
        c = ps.original(m[short], name)
        plan.append((c, "forward", _wrap_matcher(ps.original(c, "forward"), c, to_corners, kind)))
    gd = ps.original(m["grounding_dino"], "GroundingDinoHungarianMatcher")
    plan.append((gd, "forward", _wrap_grounding_matcher(ps.original(gd, "forward"), gd, to_corners)))
    lw = ps.original(m["lw_detr"], "LwDetrHungarianMatcher")
    plan.append((lw, "forward", _wrap_group_matcher(ps.original(lw, "forward"), lw, to_corners)))
    rf = ps.original(m["rf_detr"], "RfDetrHungarianMatcher")
    for name in ("sample_point", "pair_wise_sigmoid_cross_entropy_loss", "pair_wise_dice_loss"):
        ps.original(m["rf_detr"], name)  # the mask cost's lines read them: they must exist
    plan.append((rf, "forward", _wrap_rf_matcher(ps.original(rf, "forward"), rf, m["rf_detr"], to_corners)))
    for owner, name, new in plan:
        ps.replace(owner, name, new)


_switch = Switch("transformers", _load, _apply)
patch = _switch.patch
unpatch = _switch.unpatch
patched = _switch.patched


def is_patched():
    return _switch.is_patched


__all__ = ["patch", "unpatch", "patched", "is_patched"]
