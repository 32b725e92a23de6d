"""ultralytics YOLO (v8 / 11 detection losses) on detloss_cuda's fused kernels.

    import detloss_cuda.integrations.ultralytics as dl
    dl.patch()                  # before or after the trainer builds its criterion
    ...
    dl.unpatch()                # the originals, the very same objects
    with dl.patched(): ...      # or for a block

What is routed (wrapping ultralytics' own classes and functions; each wrapper hands inputs
the fused ops do not take — MPS tensors, integer boxes, targets that require grad — to the
original):

* ``TaskAlignedAssigner`` (the exact class), ``SegTaskAlignedAssigner`` (YOLO26-seg's
  mask-aware overlap, with its bool ``gt_masks``), ``RotatedTaskAlignedAssigner``
  (YOLO-OBB's: xywhr boxes, the rotated candidate test, ProbIoU; ``v8OBBLoss`` calls it) and
  ``PoseTaskAlignedAssigner`` (YOLO26-pose's: the level gate, OKS of the keypoints):
  ``forward`` on the fused assigner
  (``detloss_cuda.assign``): the same five outputs without its ``(batch, boxes, anchors)`` or
  ``(pairs, H, W)`` tensors;
* ``v8DetectionLoss.get_assigned_targets_and_loss`` (YOLOv8/11/26 detection and
  segmentation, and both branches of the end-to-end ``E2ELoss``), when its assigner is one
  of those classes (YOLO26-seg's ``SegmentLoss26`` passes the mask arguments, YOLO26-pose's
  ``PoseLoss26`` the strides and keypoints): the assignment takes the head's logits (the sigmoid only where a box's class is
  read) and returns each anchor's class and score, which the fused BCE takes as class
  indices: no ``[B, A, C]`` sigmoid, target or loss tensor is built; the box and DFL losses
  are ultralytics' own (``BboxLoss``, on the kernels below), weighted by the same scores.
  Otherwise (another assigner, extra assignment arguments, a weighted BCE) only the BCE is
  swapped for the fused one and ultralytics' code runs;
* ``v8OBBLoss.loss`` (YOLO-OBB, both branches of YOLO26-obb's ``E2ELoss``), when its assigner
  is exactly ``RotatedTaskAlignedAssigner`` and its BCE plain: the same as the detection step
  (the rotated assignment from the logits, the BCE on class indices), ultralytics' own
  ``RotatedBboxLoss`` and angle loss weighted by the same scores; ``v8OBBLoss.bbox_decode``
  on the distribution integral; ``probiou`` (as ``RotatedBboxLoss`` calls it): the fused
  ProbIoU, same signature, shape and dtype. Otherwise only the BCE is swapped;
* ``v8PoseLoss.loss`` (YOLOv8/11-pose): the keypoint losses on the foreground anchors'
  keypoints only, gathered from the head's output (ultralytics decodes every anchor's
  ``[B, A, K, 3]`` first); ultralytics' ``KeypointLoss`` and visibility BCE on them;
* ``PoseLoss26.loss`` (YOLO26-pose, both ``E2ELoss`` branches): the assignment on the fused
  keypoint assigner, which reads the decoded keypoints of every anchor as a view of the
  head's output; the keypoint, visibility and RLE losses (ultralytics' modules) on the
  foreground anchors' keypoints and sigmas only, gathered from the head's output;
* ``v8DetectionLoss.bbox_decode``: softmax over the bins · ``proj`` becomes
  ``distribution_integral`` (``proj`` must be ``arange(reg_max)``, as ultralytics builds it;
  checked once per criterion, when it is built (``__init__``), so that a compiled step reads
  no tensor to decide; a criterion built before ``patch()`` is checked at its first eager
  call, and takes ultralytics' decode inside a compiled graph until then);
* ``bbox_iou`` as ``BboxLoss`` (CIoU of the foreground pairs) and ``TaskAlignedAssigner``
  (CIoU of every candidate pair) call it: our box kernels, same signature and shapes;
* ``v8SegmentationLoss.calculate_segmentation_loss`` (YOLOv8/11-seg, and YOLO26-seg's
  ``SegmentLoss26``, which inherits it): ``prototype_mask_loss``, one op over every anchor
  with ``fg_mask`` as its positive mask, computing only the pixels inside each positive's box:
  no per-image loop, no ``(positives, H, W)`` logits, targets, BCE or crop tensors, no host
  synchronisation; both ``overlap_mask`` forms. One difference: ultralytics adds
  ``(proto * 0).sum() + (pred_masks * 0).sum()`` for an image without positives, which is 0
  unless those hold inf or NaN (then its loss is NaN, ours is not).
* ``v8SegmentationLoss.loss`` with a semantic head (YOLO26-seg): the semantic branch's
  ``BCEDiceLoss`` on class indices (each pixel's class, background where no instance is:
  ultralytics' ``present``), no ``[B, C, H, W]`` one-hot: the BCE on the index-target kernel,
  the Dice from per-class sums; the rest of the step is ultralytics' ``loss``.
* ``DFLoss``: ``distribution_focal_loss``, same clamp of the target and mean over sides;
* ``VarifocalLoss`` and ``FocalLoss`` (not used by the default detection loss; the RT-DETR
  and custom criteria use them): our VFL and focal kernels. VFL's ``label`` is read as a
  0/1 mask (ultralytics passes one-hot labels).

* ``ultralytics.utils.dist.generate_ddp_file``: the script ultralytics writes to re-launch
  multi-GPU training with ``torch.distributed.run`` gets one line that patches each worker
  (a patch() does not cross a process boundary; ``DETLOSS_PATCH``, set by patch(), does
  for workers that import detloss_cuda: ``detloss_cuda.integrations``).

Numbers: the same loss items and gradients as unpatched ultralytics up to float32 rounding
and two documented differences: in xyxy mode ultralytics adds ``eps`` (1e-7) to both heights
inside ``bbox_iou``; the fused box kernels do not (a relative change of order eps/height; the
fused assigner does add it, as its overlaps must rank as ultralytics' do); and where
torch.topk chooses among equal zero alignment metrics (ultralytics' choice is arbitrary), the
fused assigner takes the lowest anchor indices: those anchors have a target score of 0, so
the detection losses are unchanged; a segmentation loss counts such foreground anchors. The
mask-aware overlap binarises ``coef · proto > 0`` with its own summation order: a pixel whose
sum is within rounding of 0 may differ from ultralytics' matmul (whose own result depends on
the BLAS and, under AMP, on fp16), and its 3·topk list breaks ties by the lower anchor index.
``tests/test_integrations.py`` compares a YOLOv8n training step end to end.
"""
import functools

import torch

from .. import functional as DF
from .. import match as DM
from ..assign import task_aligned_assign
from ._patching import Switch, load_library, ours, wrap_bbox_iou

KNOWN = "ultralytics 8.3 and 8.4 (tested with 8.4.190)"


def _load():
    return load_library("ultralytics", ("ultralytics.utils.loss", "ultralytics.utils.tal",
                                        "ultralytics.utils.dist", "ultralytics.models.utils.loss",
                                        "ultralytics.models.utils.ops"), KNOWN)


_DDP_HOOK = ("import detloss_cuda.integrations.ultralytics as _detloss_cuda; "
             "_detloss_cuda.patch()  # added by detloss_cuda's patch in the launching process")


def _wrap_ddp_file(orig):
    """ultralytics trains on several GPUs by writing a script and re-launching it with
    torch.distributed.run: a patch() made here is not active in those workers. The script
    gets one line that patches them (after its sys.path line, so that it imports what the
    launcher imports)."""
    @functools.wraps(orig)
    def generate_ddp_file(trainer):
        path = orig(trainer)
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        at = next((i + 1 for i, line in enumerate(lines) if line.lstrip().startswith("sys.path =")),
                  None)
        if at is None:
            lines.insert(0, _DDP_HOOK + "\n")
        else:
            indent = lines[at - 1][: len(lines[at - 1]) - len(lines[at - 1].lstrip())]
            lines.insert(at, indent + _DDP_HOOK + "\n")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(lines))
        return path
    return generate_ddp_file


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


def _with_fused_bce(crit, call):
    """call() (ultralytics' own step) with the criterion's plain BCE swapped for the fused one
    for this call only (the criterion is left as it was); a weighted BCE: call() as is."""
    bce = getattr(crit, "bce", None)
    if not _plain_bce(bce):
        return call()
    crit.bce = FusedBCEWithLogits()
    try:
        return call()
    finally:
        crit.bce = bce


_SEG_KW = ("pd_coef", "mask_scale", "proto", "gt_masks")  # SegTaskAlignedAssigner's extra arguments


def _seg_arguments(assigner, seg_cls, extra):
    """The mask-aware assigner's arguments when the fused one takes them (ultralytics' own
    class, its four arguments as tensors our kernels serve, binary gt_masks), else None."""
    if (type(assigner) is not seg_cls or sorted(extra) != sorted(_SEG_KW)
            or not 1 <= getattr(assigner, "topk", 0) <= 21):  # (its lists of 3·topk hold 64)
        return None
    t = [extra[k] for k in _SEG_KW]
    gt_masks = t[3]
    if (not ours(*t[:3]) or type(gt_masks) is not torch.Tensor or gt_masks.dtype != torch.bool
            or gt_masks.device.type not in ("cpu", "cuda")):
        return None
    return dict(zip(_SEG_KW, t))


_POSE_KW = ("anc_strides", "gt_kpts", "pd_kpts")  # PoseLoss26's assignment arguments


def _pose_arguments(assigner, pose_cls, extra):
    """The keypoint assigner's arguments when the fused one takes them (ultralytics' own
    PoseTaskAlignedAssigner, its strides and keypoints as tensors our kernels serve), else
    None. extra: PoseLoss26's three, or the two its forward passes on (the strides then on
    the assigner)."""
    if pose_cls is None or type(assigner) is not pose_cls:
        return None
    extra = dict(extra)
    if sorted(extra) == ["gt_kpts", "pd_kpts"]:
        extra["anc_strides"] = getattr(assigner, "anc_strides", None)
    sigmas = getattr(assigner, "sigmas", None)
    if sorted(extra) != list(_POSE_KW) or not ours(*(extra[k] for k in _POSE_KW), sigmas):
        return None
    try:
        lo, hi = assigner.level_range
        level_range = (float(lo), float(hi))
    except (TypeError, ValueError, AttributeError):
        return None
    return dict(extra, sigmas=sigmas, level_range=level_range)


def _fused_assignment(self, tal_cls, seg_cls, pose_cls, extra):
    """The criterion can take the fused path: its assigner is ultralytics' own detection class
    without extra arguments, or its own SegTaskAlignedAssigner with its four, or its own
    PoseTaskAlignedAssigner with its three (not another subclass with another overlap), and
    its BCE plain. Returns the assigner's extra arguments for task_aligned_assign, or None."""
    if not _plain_bce(getattr(self, "bce", None)):
        return None
    assigner = getattr(self, "assigner", None)
    if type(assigner) is tal_cls and not extra:
        return {}
    if type(assigner) is pose_cls:
        return _pose_arguments(assigner, pose_cls, extra)
    return _seg_arguments(assigner, seg_cls, extra)


def _wrap_assigned(orig, tal_cls, seg_cls, pose_cls, make_anchors):
    @functools.wraps(orig)
    def get_assigned_targets_and_loss(self, preds, batch, **assign_kwargs):
        scores = preds.get("scores") if isinstance(preds, dict) else None
        seg = _fused_assignment(self, tal_cls, seg_cls, pose_cls, assign_kwargs)
        if seg is None or not ours(scores):
            return _with_fused_bce(self, lambda: orig(self, preds, batch, **assign_kwargs))
        # ultralytics' own steps (targets, decode, box losses), with the assignment and the
        # classification loss on class indices: no [B, A, C] tensor
        loss = torch.zeros(3, device=self.device)  # box, cls, dfl
        # the head's [B, 4·R, A] box bins as a [B, A, 4·R] view (ultralytics copies them): the
        # CPU integral reads this layout in place and writes its gradient in the head's own
        # layout, sparing a transpose of the whole tensor each way (csrc/ops/dfl.h)
        pred_distri = preds["boxes"].permute(0, 2, 1)
        # the head's [B, C, A] scores as a [B, A, C] view: the assigner and the class-major
        # BCE read them in place (ultralytics copies them to [B, A, C] first)
        pred_scores = preds["scores"].permute(0, 2, 1)
        anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
        dtype = pred_scores.dtype
        batch_size = pred_scores.shape[0]
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=dtype) * self.stride[0]
        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        targets = self.preprocess(targets.to(self.device), batch_size, scale_tensor=imgsz[[1, 0, 1, 0]])
        gt_labels, gt_bboxes = targets.split((1, 4), 2)
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
        pred_bboxes = self.bbox_decode(anchor_points, pred_distri)
        a = self.assigner
        r = task_aligned_assign(
            pred_scores.detach(), (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
            anchor_points * stride_tensor, gt_labels, gt_bboxes, mask_gt, topk=a.topk,
            num_classes=a.num_classes, alpha=a.alpha, beta=a.beta, stride_val=a.stride_val,
            eps=a.eps, topk2=a.topk2, scores_are_logits=True, index=True, **seg)
        labels, score = r
        target_scores_sum = score.sum().clamp_(min=1)  # = the one-hot target's sum, on the device
        weight = self.class_weights  # (1, 1, C) or None: broadcast over [B, A, C] in the kernel
        loss[1] = DF.binary_cross_entropy_with_logits(pred_scores, labels, weight=weight,
                                                      score=score, reduction="sum") / target_scores_sum
        # BboxLoss weighs each foreground anchor by its target scores' sum over classes: the
        # score itself, passed as [B, A, 1]
        loss[0], loss[2] = self.bbox_loss(pred_distri, pred_bboxes, anchor_points,
                                          r.target_bboxes / stride_tensor, score.unsqueeze(-1),
                                          target_scores_sum, r.fg_mask, imgsz, stride_tensor)
        loss[0] *= self.hyp.box
        loss[1] *= self.hyp.cls
        loss[2] *= self.hyp.dfl
        return ((r.fg_mask, r.target_gt_idx, r.target_bboxes, anchor_points, stride_tensor), loss,
                dict(zip(self.loss_names, loss.detach())))
    return get_assigned_targets_and_loss


def _wrap_tal_forward(orig, tal_cls, seg_cls, rot_cls, pose_cls):
    """TaskAlignedAssigner.forward, which SegTaskAlignedAssigner, RotatedTaskAlignedAssigner
    and PoseTaskAlignedAssigner inherit (the last after storing anc_strides): those exact
    classes on the fused assigner, any other subclass ultralytics' own."""
    @functools.wraps(orig)
    def forward(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra):
        if type(self) is tal_cls and not extra:
            seg = {}
        elif type(self) is rot_cls and not extra:
            seg = {"rotated": True}
        elif type(self) is pose_cls:
            seg = _pose_arguments(self, pose_cls, extra)
        else:
            seg = _seg_arguments(self, seg_cls, extra)
        if seg is None or not ours(pd_scores, pd_bboxes, anc_points, gt_bboxes):
            return orig(self, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, **extra)
        self.bs, self.n_max_boxes = pd_scores.shape[0], gt_bboxes.shape[1]
        with torch.no_grad():
            return task_aligned_assign(
                pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk=self.topk,
                num_classes=self.num_classes, alpha=self.alpha, beta=self.beta,
                stride_val=self.stride_val, eps=self.eps, topk2=self.topk2, **seg)
    return forward


def _angle_loss(pred_bboxes, target_bboxes, fg_mask, score, target_scores_sum, lambda_val=3):
    """v8OBBLoss.calculate_angle_loss with the foreground selected by a mask, not an index
    (no dynamic shape: no host read, no graph break; it computes every anchor's term either
    way): sin²(2·Δθ wrapped to [-π/2, π/2]) · exp(-log(w/h)²/λ²) · score, summed."""
    import math

    w_gt, h_gt = target_bboxes[..., 2], target_bboxes[..., 3]
    log_ar = torch.log((w_gt + 1e-9) / (h_gt + 1e-9))
    scale_weight = torch.exp(-(log_ar**2) / (lambda_val**2))
    delta = pred_bboxes[..., 4] - target_bboxes[..., 4]
    wrapped = delta - torch.round(delta / math.pi) * math.pi
    ang = torch.sin(2 * wrapped) ** 2 * scale_weight * torch.where(fg_mask, score, 0)
    return ang.sum() / target_scores_sum


def _obb_targets(self, batch, batch_size, imgsz):
    """v8OBBLoss's targets: (labels, xywhr boxes, valid) [B, M, ...], as ultralytics builds
    them but for its filter of boxes below 2 px a side, whose rows are zeroed (not valid for
    the assigner, as an absent box) rather than removed: no dynamic shape here (ultralytics'
    preprocess then packs them; its M can be larger than ultralytics' own, the assignment is
    the same). imgsz's elements are used as 0-dim tensors, not read as floats: the same
    float32 products without a host read."""
    batch_idx = batch["batch_idx"].view(-1, 1)
    targets = torch.cat((batch_idx, batch["cls"].view(-1, 1), batch["bboxes"].view(-1, 5)), 1)
    rw, rh = targets[:, 4] * imgsz[1], targets[:, 5] * imgsz[0]
    keep = ((rw >= 2) & (rh >= 2)).unsqueeze(1)
    targets = torch.cat((targets[:, :2], torch.where(keep, targets[:, 2:], 0)), 1)
    targets = self.preprocess(targets.to(self.device), batch_size, scale_tensor=imgsz[[1, 0, 1, 0]])
    gt_labels, gt_bboxes = targets.split((1, 5), 2)  # cls, xywhr
    return gt_labels, gt_bboxes, gt_bboxes.sum(2, keepdim=True).gt_(0.0)


def _wrap_obb_loss(orig, rot_cls, make_anchors, angle_loss):
    """v8OBBLoss.loss (YOLO-OBB; both branches of YOLO26-obb's E2ELoss): ultralytics' step
    with the rotated assignment from the logits and the BCE on its class indices (no
    [B, A, C] sigmoid, target or loss), as the detection step's; the box, DFL and angle losses
    are ultralytics' own (RotatedBboxLoss on the fused ProbIoU and DFL). Another assigner or a
    weighted BCE: only the BCE is swapped for the fused one."""
    @functools.wraps(orig)
    def loss(self, preds, batch):
        scores = preds.get("scores") if isinstance(preds, dict) else None
        if type(getattr(self, "assigner", None)) is not rot_cls or not ours(scores) \
                or not _plain_bce(getattr(self, "bce", None)):
            return _with_fused_bce(self, lambda: orig(self, preds, batch))
        loss = torch.zeros(4, device=self.device)  # box, cls, dfl, angle
        # views of the head's [B, C, A] outputs (ultralytics copies them to [B, A, C])
        pred_distri = preds["boxes"].permute(0, 2, 1)
        pred_scores = preds["scores"].permute(0, 2, 1)
        pred_angle = preds["angle"].permute(0, 2, 1)
        anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
        batch_size = pred_angle.shape[0]
        dtype = pred_scores.dtype
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=dtype) * self.stride[0]
        if torch.compiler.is_compiling():  # (Dynamo cannot resume inside a try block)
            gt_labels, gt_bboxes, mask_gt = _obb_targets(self, batch, batch_size, imgsz)
        else:
            try:
                gt_labels, gt_bboxes, mask_gt = _obb_targets(self, batch, batch_size, imgsz)
            except RuntimeError as e:  # ultralytics' own error
                raise TypeError(
                    "ERROR \u274c OBB dataset incorrectly formatted or not a OBB dataset.\n"
                    "This error can occur when incorrectly training a 'OBB' model on a 'detect' dataset, "
                    "i.e. 'yolo train model=yolo26n-obb.pt data=coco8.yaml'.\nVerify your dataset is a "
                    "correctly formatted 'OBB' dataset using 'data=dota8.yaml' "
                    "as an example.\nSee https://docs.ultralytics.com/datasets/obb for help."
                ) from e
        pred_bboxes = self.bbox_decode(anchor_points, pred_distri, pred_angle)  # xywhr
        bboxes_for_assigner = pred_bboxes.detach().clone()
        bboxes_for_assigner[..., :4] *= stride_tensor
        a = self.assigner
        r = task_aligned_assign(
            pred_scores.detach(), bboxes_for_assigner.type(gt_bboxes.dtype),
            anchor_points * stride_tensor, gt_labels, gt_bboxes, mask_gt, topk=a.topk,
            num_classes=a.num_classes, alpha=a.alpha, beta=a.beta, stride_val=a.stride_val,
            eps=a.eps, topk2=a.topk2, scores_are_logits=True, index=True, rotated=True)
        labels, score = r
        target_scores_sum = score.sum().clamp_(min=1)
        loss[1] = DF.binary_cross_entropy_with_logits(pred_scores, labels, weight=self.class_weights,
                                                      score=score, reduction="sum") / target_scores_sum
        fg_mask = r.fg_mask
        target_bboxes = r.target_bboxes
        target_bboxes[..., :4] /= stride_tensor
        # No `if fg_mask.sum():` (a host read, a graph break): without a foreground anchor
        # each term below is an empty sum, 0, as ultralytics' else-branch gives (which adds
        # pred_angle·0: NaN where the head's angle is inf or NaN, not here).
        # RotatedBboxLoss weighs each foreground anchor by its target scores' sum over
        # classes: the score itself, passed as [B, A, 1]
        loss[0], loss[2] = self.bbox_loss(pred_distri, pred_bboxes, anchor_points, target_bboxes,
                                          score.unsqueeze(-1), target_scores_sum, fg_mask, imgsz,
                                          stride_tensor)
        if type(self).calculate_angle_loss is angle_loss:
            loss[3] = _angle_loss(pred_bboxes, target_bboxes, fg_mask, score, target_scores_sum)
        else:  # a subclass's own
            loss[3] = self.calculate_angle_loss(pred_bboxes, target_bboxes, fg_mask, score[fg_mask],
                                                target_scores_sum)
        loss[0] *= self.hyp.box
        loss[1] *= self.hyp.cls
        loss[2] *= self.hyp.dfl
        loss[3] *= self.hyp.angle
        return loss * batch_size, dict(zip(self.loss_names, loss.detach()))
    return loss


def _foreground_keypoint_losses(self, loss, pred_kpt, keypoints, b, a, target_gt_idx, fg_mask,
                                stride_tensor, target_bboxes, xyxy2xywh):
    """calculate_keypoints_loss (v8PoseLoss's and PoseLoss26's, ultralytics' lines) on the
    foreground rows (b, a) only: pred_kpt [N, K, D'] decoded; into loss[1] (keypoints), loss[2]
    (visibility: D' 3 or 5) and, with an RLE loss and sigmas (D' 4 or 5), loss[5]."""
    stride = stride_tensor[a]  # [N, 1]
    gt_kpt = keypoints[b, target_gt_idx[fg_mask]]
    gt_kpt[..., :2] /= stride[:, None]
    area = xyxy2xywh(target_bboxes[fg_mask] / stride)[:, 2:].prod(1, keepdim=True)
    kpt_mask = gt_kpt[..., 2] != 0
    loss[1] = self.keypoint_loss(pred_kpt, gt_kpt, kpt_mask, area)
    if getattr(self, "rle_loss", None) is not None and pred_kpt.shape[-1] in (4, 5):
        loss[5] = self.calculate_rle_loss(pred_kpt, gt_kpt, kpt_mask).clamp(min=0)
    if pred_kpt.shape[-1] in (3, 5):
        loss[2] = self.bce_pose(pred_kpt[..., 2], kpt_mask.float())


def _wrap_pose_loss(orig, pose_cls, xyxy2xywh):
    """v8PoseLoss.loss (YOLOv8/11-pose): ultralytics' step (its detection part already on the
    fused assignment and BCE through get_assigned_targets_and_loss), with the keypoints of
    the foreground anchors only: gathered from the head's [B, K·D, A] output, decoded and
    compared there. ultralytics copies the whole output to [B, A, K, D], decodes every anchor
    (a clone and in-place edits: their backward copies the whole tensor again) and then
    indexes the foreground. A subclass overriding a step, or keypoints the kernels' devices do
    not serve: ultralytics' code."""
    @functools.wraps(orig)
    def loss(self, preds, batch):
        kp = preds.get("kpts") if isinstance(preds, dict) else None
        cls = type(self)
        # (compiled: ultralytics' step, whose host reads and dynamic shapes break the graph in
        # its own frames; this one's nonzero would break it here)
        if (torch.compiler.is_compiling() or not ours(kp) or kp.dim() != 3
                or cls.kpts_decode is not pose_cls.kpts_decode
                or cls.calculate_keypoints_loss is not pose_cls.calculate_keypoints_loss
                or cls.get_assigned_targets_and_loss is not pose_cls.get_assigned_targets_and_loss):
            return orig(self, preds, batch)
        K, D = self.kpt_shape
        loss = torch.zeros(5, device=self.device)  # box, kpt_location, kpt_visibility, cls, dfl
        (fg_mask, target_gt_idx, target_bboxes, anchor_points, stride_tensor), det_loss, _ = (
            self.get_assigned_targets_and_loss(preds, batch))
        loss[0], loss[3], loss[4] = det_loss[0], det_loss[1], det_loss[2]
        batch_size = kp.shape[0]
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=kp.dtype) * self.stride[0]
        if fg_mask.sum():
            keypoints = self._batch_keypoints(batch, batch_size, imgsz)
            b, a = fg_mask.nonzero(as_tuple=True)  # the foreground, in ultralytics' (b, a) order
            pred_kpt = kp[b, :, a].view(-1, K, D)  # [N, K, D] of the head's [B, K·D, A]
            # kpts_decode: x·2 + (anchor - 0.5), as ultralytics rounds it
            xy = pred_kpt[..., :2] * 2.0 + (anchor_points[a][:, None, :] - 0.5)
            pred_kpt = torch.cat((xy, pred_kpt[..., 2:]), -1)
            _foreground_keypoint_losses(self, loss, pred_kpt, keypoints, b, a, target_gt_idx, fg_mask,
                                        stride_tensor, target_bboxes, xyxy2xywh)
        else:  # ultralytics' DDP line: the keypoints stay in the graph
            loss[1] += kp[..., :0].sum()
        loss[1] *= self.hyp.pose
        loss[2] *= self.hyp.kobj
        return loss * batch_size, dict(zip(self.loss_names, loss.detach()))
    return loss


def _wrap_pose26_loss(orig, pose_cls, make_anchors, xyxy2xywh):
    """PoseLoss26.loss (YOLO26-pose): the assignment on the fused keypoint assigner (through
    get_assigned_targets_and_loss, which gets the decoded keypoints as a view of the head's
    output, read in place: no [B, A, K, D] copy), the keypoint, visibility and RLE losses
    (ultralytics' own modules) on the foreground anchors' keypoints only, gathered from the
    head's [B, K·D, A] output and decoded there. ultralytics copies every anchor's keypoints
    (and sigmas) to [B, A, K, D + 2], decodes all of them (a clone and in-place edits, whose
    backward copies the whole tensor again) and then indexes the foreground. A subclass
    overriding a step, or tensors the kernels' devices do not serve: ultralytics' code."""
    @functools.wraps(orig)
    def loss(self, preds, batch):
        kp = preds.get("kpts") if isinstance(preds, dict) else None
        sig = preds.get("kpts_sigma") if isinstance(preds, dict) else None
        rle = self.rle_loss is not None and sig is not None
        cls = type(self)
        if (torch.compiler.is_compiling() or not ours(kp) or kp.dim() != 3
                or (rle and (not ours(sig) or sig.shape != (kp.shape[0], 2 * self.kpt_shape[0], kp.shape[2])))
                or any(getattr(cls, n) is not getattr(pose_cls, n) for n in (
                    "kpts_decode", "calculate_keypoints_loss", "calculate_rle_loss",
                    "get_assigned_targets_and_loss", "_batch_keypoints"))):
            return orig(self, preds, batch)
        K, D = self.kpt_shape
        B, A = kp.shape[0], kp.shape[2]
        loss = torch.zeros(6 if self.rle_loss else 5, device=self.device)
        anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=kp.dtype) * self.stride[0]
        gt_kpts = self._batch_keypoints(batch, B, imgsz)
        # the assigner's keypoints in pixels, (x + anchor)·stride as ultralytics rounds them,
        # over [B, K, 2, A] and viewed [B, A, K, 2]
        xy = kp.detach().view(B, K, D, A)[:, :, :2]
        pd_kpts = ((xy + anchor_points.t()[None, None]) * stride_tensor.view(1, 1, 1, A)).permute(0, 3, 1, 2)
        (fg_mask, target_gt_idx, target_bboxes, _, _), det_loss, _ = self.get_assigned_targets_and_loss(
            preds, batch, pd_kpts=pd_kpts, gt_kpts=gt_kpts, anc_strides=stride_tensor.view(-1))
        loss[0], loss[3], loss[4] = det_loss[0], det_loss[1], det_loss[2]
        if fg_mask.sum():
            b, a = fg_mask.nonzero(as_tuple=True)  # the foreground, in ultralytics' (b, a) order
            pred_kpt = kp[b, :, a].view(-1, K, D)  # [N, K, D] of the head's [B, K·D, A]
            if rle:
                pred_kpt = torch.cat((pred_kpt, sig[b, :, a].view(-1, K, 2)), -1)
            # kpts_decode (YOLO26): x + anchor
            pred_kpt = torch.cat((pred_kpt[..., :2] + anchor_points[a][:, None, :], pred_kpt[..., 2:]), -1)
            _foreground_keypoint_losses(self, loss, pred_kpt, gt_kpts, b, a, target_gt_idx, fg_mask,
                                        stride_tensor, target_bboxes, xyxy2xywh)
        else:  # ultralytics' DDP lines: the keypoints (and sigmas, the flow model) stay in the graph
            zero = kp[..., :0].sum() + (sig[..., :0].sum() if rle else 0)
            loss[1] += zero
            if self.rle_loss is not None:
                loss[5] += self._rle_zero(kp) + (sig[..., :0].sum() if rle else 0)
        loss[1] *= self.hyp.pose
        loss[2] *= self.hyp.kobj
        if self.rle_loss is not None:
            loss[5] *= self.hyp.rle
        return loss * B, dict(zip(self.loss_names, loss.detach()))
    return loss


_PROJ_IS_ARANGE = "_detloss_proj_is_arange"  # set on a criterion: its proj is arange(n)


def _proj_is_arange(crit):
    """Whether crit.proj is arange(n), as ultralytics builds it: one host read a criterion."""
    proj = getattr(crit, "proj", None)
    return (isinstance(proj, torch.Tensor) and proj.dim() == 1 and
            torch.equal(proj.detach().cpu().double(), torch.arange(proj.numel()).double()))


def _wrap_det_init(orig):
    """Reads proj when the criterion is built, so that a compiled step decides nothing from a
    tensor's values (a graph break in every bbox_decode)."""
    @functools.wraps(orig)
    def __init__(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        setattr(self, _PROJ_IS_ARANGE, _proj_is_arange(self))
    return __init__


def _integral(self, pred_dist):
    """The expected distances of ultralytics' DFL decode (softmax over each side's bins ·
    proj, proj = arange(R)) as distribution_integral, [B, A, 4]; None where the fused
    integral does not apply (no DFL, other devices, another proj, or a criterion built
    before patch() inside a compiled graph, where proj cannot be read)."""
    if not getattr(self, "use_dfl", False) or not ours(pred_dist) or pred_dist.dim() != 3:
        return None
    b, a, c = pred_dist.shape
    ok = getattr(self, _PROJ_IS_ARANGE, None)
    if ok is None:  # a criterion built before patch()
        if torch.compiler.is_compiling():
            return None  # no host read inside a graph
        ok = _proj_is_arange(self)
        setattr(self, _PROJ_IS_ARANGE, ok)
    if not ok or c % 4 != 0 or self.proj.numel() != c // 4:
        return None
    return DF.distribution_integral(pred_dist.view(b, a, 4, c // 4))


def _wrap_bbox_decode(orig, dist2bbox):
    @functools.wraps(orig)
    def bbox_decode(self, anchor_points, pred_dist):
        dist = _integral(self, pred_dist)
        if dist is None:
            return orig(self, anchor_points, pred_dist)
        return dist2bbox(dist, anchor_points, xywh=False)
    return bbox_decode


def _wrap_obb_decode(orig, dist2rbox):
    """v8OBBLoss.bbox_decode: the integral (as the detection decode), then ultralytics'
    dist2rbox."""
    @functools.wraps(orig)
    def bbox_decode(self, anchor_points, pred_dist, pred_angle):
        dist = _integral(self, pred_dist)
        if dist is None:
            return orig(self, anchor_points, pred_dist, pred_angle)
        return torch.cat((dist2rbox(dist, pred_angle, anchor_points), pred_angle), dim=-1)
    return bbox_decode


def _wrap_probiou(orig):
    """ultralytics' probiou (RotatedBboxLoss calls it on the foreground pairs) on the fused
    kernel: same signature, shapes and dtype; boxes the kernels do not take go to orig."""
    @functools.wraps(orig)
    def probiou(obb1, obb2, CIoU=False, eps=1e-7, floor=0.0):  # noqa: N803
        if not ours(obb1, obb2) or obb1.shape[-1:] != (5,) or obb2.shape[-1:] != (5,):
            return orig(obb1, obb2, CIoU, eps, floor)
        if obb1.dtype != obb2.dtype:  # mixed under AMP: promote as torch would
            dt = torch.promote_types(obb1.dtype, obb2.dtype)
            obb1, obb2 = obb1.to(dt), obb2.to(dt)
        return DF.probiou(obb1, obb2, CIoU=CIoU, eps=eps, floor=floor)
    return probiou


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


_SEG_FG = "_detloss_seg_fg"  # set on a criterion: calculate_segmentation_loss ran this call


def _wrap_seg_loss(orig, xyxy2xywh):
    @functools.wraps(orig)
    def calculate_segmentation_loss(self, fg_mask, masks, target_gt_idx, target_bboxes,
                                    batch_idx, proto, pred_masks, imgsz):
        setattr(self, _SEG_FG, True)  # (ultralytics calls it when there are positives)
        if (not ours(proto, pred_masks, target_bboxes) or proto.dim() != 4
                or pred_masks.dim() != 3 or proto.dtype != pred_masks.dtype
                or pred_masks.shape[-1] != proto.shape[1] or proto.shape[1] > 64
                or masks.dim() != 3 or masks.shape[-2:] != proto.shape[-2:]
                or masks.device != proto.device or masks.is_complex()
                or (not self.overlap and masks.shape[0] == 0)):
            return orig(self, fg_mask, masks, target_gt_idx, target_bboxes, batch_idx, proto,
                        pred_masks, imgsz)
        bs, _, mask_h, mask_w = proto.shape
        # ultralytics' arithmetic for the boxes: normalised, their areas, in prototype pixels
        normalized = target_bboxes / imgsz[[1, 0, 1, 0]]
        marea = xyxy2xywh(normalized)[..., 2:].prod(2)
        mxyxy = normalized * torch.tensor([mask_w, mask_h, mask_w, mask_h], device=proto.device)
        # every anchor, fg_mask saying which are positives: no nonzero(), no host read, so a
        # compiled step does not break here (ultralytics' loop reads fg_mask per image)
        img = torch.arange(bs, device=proto.device).view(bs, 1).expand_as(fg_mask)
        if self.overlap:  # masks[i] == target_gt_idx + 1 marks the object's pixels
            rows = target_gt_idx
        else:  # masks [N, H, W] in batch order: the image's target_gt_idx-th mask
            bi = batch_idx.view(-1).long()
            order = torch.argsort(bi, stable=True)
            start = torch.searchsorted(bi[order], torch.arange(bs, device=bi.device))
            rows = order[(start.view(bs, 1) + target_gt_idx).clamp(0, order.numel() - 1)]
        # ultralytics adds (proto * 0).sum() + (pred_masks * 0).sum() for an image without
        # positives (DDP's unused gradients): the op uses both tensors whatever fg_mask says
        return DF.prototype_mask_loss(pred_masks, proto, img, mxyxy, marea, masks, rows,
                                      self.overlap, "mean", positive=fg_mask)
    return calculate_segmentation_loss


def _semantic_loss(pred, sem_idx, present, weight_bce, weight_dice):
    """BCEDiceLoss(pred, one-hot of sem_idx zeroed where no instance is) on class indices:
    each pixel's class, C (background) where nothing is present; no [B, C, H, W] target.
    BCE: the index-target kernel on the [B, H, W, C] view of the logits (the mean over B·C·H·W
    as BCEWithLogitsLoss'). Dice (MultiChannelDiceLoss, smooth 1): per image and class, the
    intersection is the sum of sigmoid(pred) over the pixels of that class, the target's sum
    their count."""
    B, C, h, w = pred.shape
    label = torch.where(present, sem_idx, torch.full_like(sem_idx, C))
    if tuple(label.shape[-2:]) != (h, w):  # nearest, as BCEDiceLoss resizes the one-hot
        label = torch.nn.functional.interpolate(label[:, None].float(), (h, w), mode="nearest")[:, 0].long()
    bce = DF.binary_cross_entropy_with_logits(pred.permute(0, 2, 3, 1), label, reduction="mean")
    p = pred.sigmoid()
    flat = label.view(B, 1, h * w)
    hit = p.flatten(2).gather(1, flat.clamp(max=C - 1)) * (flat < C)
    inter = p.new_zeros(B, C + 1).scatter_add_(1, flat[:, 0], hit[:, 0])[:, :C]
    count = p.new_zeros(B, C + 1).scatter_add_(1, flat[:, 0], torch.ones_like(hit[:, 0]))[:, :C]
    dice = (2.0 * inter + 1) / (p.sum(dim=(2, 3)) + count + 1)
    return weight_bce * bce + weight_dice * (1.0 - dice).mean(dim=1).mean()


def _wrap_seg_call(orig, bcedice_cls, dice_cls):
    """v8SegmentationLoss.loss with a semantic head (YOLO26-seg): ultralytics' step without the
    semantic branch, then the branch on class indices (_semantic_loss) where ultralytics
    computes it (when there are positives), its gain and batch-size scale."""
    @functools.wraps(orig)
    def loss(self, preds, batch):
        proto = preds.get("proto") if isinstance(preds, dict) else None
        bd = getattr(self, "bcedice_loss", None)
        if (not (isinstance(proto, tuple) and len(proto) == 2) or not ours(proto[1])
                or type(bd) is not bcedice_cls or type(getattr(bd, "dice", None)) is not dice_cls
                or bd.dice.smooth != 1 or bd.dice.reduction != "mean"
                or "sem_masks" not in batch or "masks" not in batch):
            return orig(self, preds, batch)
        pred_semantic = proto[1]
        setattr(self, _SEG_FG, False)
        total, items = orig(self, dict(preds, proto=proto[0]), batch)
        if getattr(self, _SEG_FG):
            masks = batch["masks"].to(self.device)
            sem_idx = batch["sem_masks"].to(self.device).long()
            if self.overlap:
                present = masks != 0
            else:  # any of the image's instance masks
                bs = pred_semantic.shape[0]
                bi = batch["batch_idx"].view(-1).long().to(self.device)
                present = torch.zeros(bs, *masks.shape[-2:], device=masks.device).index_add_(
                    0, bi, masks.float()) != 0
            sem = _semantic_loss(pred_semantic, sem_idx, present, bd.weight_bce, bd.weight_dice)
        else:
            sem = (pred_semantic * 0).sum()  # ultralytics' term for a step without positives
        sem = sem * self.hyp.box
        scale = total.new_zeros(total.shape)
        scale[4] = pred_semantic.shape[0]  # ultralytics returns loss * batch_size
        total = total + scale * sem
        items = dict(items)
        name = self.loss_names[4]
        items[name] = (items[name] + sem).detach()
        return total, items
    return loss


# ------------------------------------------------------------------ RT-DETR (DETRLoss)
def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _wrap_detr_matcher(orig, cls):
    """ultralytics' ``HungarianMatcher.forward`` (RT-DETR; the exact class): its per-image
    cost (class, L1, 1 - GIoU of its bbox_iou, NaN/inf as 0) in one kernel
    (``detr_match_cost(convention='ultralytics')``) instead of a dozen ``[B, Q, max T]`` (and
    ``[B, Q, max T, 4]``) tensors, then SciPy on each image's block, as there."""
    @functools.wraps(orig)
    def forward(self, pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups):
        gain = getattr(self, "cost_gain", None)
        if (type(self) is not cls or not ours(pred_bboxes, pred_scores, gt_bboxes)
                or not isinstance(gain, dict) or not all(_is_number(gain.get(k)) for k in
                                                         ("class", "bbox", "giou"))
                or not _is_number(self.alpha) or not _is_number(self.gamma)
                or pred_scores.dim() != 3 or pred_bboxes.shape != (*pred_scores.shape[:2], 4)
                or gt_bboxes.dtype != torch.float32 or gt_bboxes.dim() != 2
                or gt_bboxes.shape[1] != 4 or type(gt_cls) is not torch.Tensor
                or gt_cls.dtype != torch.int64 or gt_cls.shape != gt_bboxes.shape[:1]
                or gt_cls.device != pred_scores.device
                or not isinstance(gt_groups, (list, tuple))
                or not all(isinstance(n, int) and n >= 0 for n in gt_groups)
                or len(gt_groups) != pred_scores.shape[0] or sum(gt_groups) != gt_cls.shape[0]
                or sum(gt_groups) == 0):
            return orig(self, pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups)
        if not ((gt_cls >= 0) & (gt_cls < pred_scores.shape[-1])).all():
            return orig(self, pred_bboxes, pred_scores, gt_bboxes, gt_cls, gt_groups)  # its error
        with torch.no_grad():  # ultralytics: detached, in float32 (.float())
            cost = DM.detr_match_cost(
                pred_scores.detach().float(), pred_bboxes.detach().float(), gt_cls, gt_bboxes,
                list(gt_groups), class_cost=gain["class"], bbox_cost=gain["bbox"],
                giou_cost=gain["giou"], class_kind="focal" if self.use_fl else "softmax",
                alpha=float(self.alpha), gamma=float(self.gamma), convention="ultralytics")
        first = torch.as_tensor([0, *gt_groups[:-1]]).cumsum_(0)
        return [(i, j + first[k]) for k, (i, j) in enumerate(DM.solve(cost, gt_groups))]
    return forward


def _wrap_detr_loss_class(orig, vfl_cls, focal_cls):
    """``DETRLoss._get_loss_class``: ultralytics builds an int64 ``[B, Q, C + 1]`` one-hot, the
    ``[B, Q, C]`` IoU targets and VFL's (or focal's) chain over them; here the fused VFL /
    focal / BCE with class-index targets (``nc`` = background, the IoU as ``score``), no
    ``[B, Q, C]`` tensor but the gradient. The losses are ultralytics' ``VarifocalLoss`` /
    ``FocalLoss`` (exact classes; others go to ultralytics' code), the same scaling."""
    @functools.wraps(orig)
    def _get_loss_class(self, pred_scores, targets, gt_scores, num_gts, postfix=""):
        fl, vfl = getattr(self, "fl", None), getattr(self, "vfl", None)
        use_vfl = bool(fl) and bool(num_gts) and bool(vfl)
        if (not ours(pred_scores, gt_scores) or pred_scores.dim() != 3
                or not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64
                or targets.shape != pred_scores.shape[:2] or gt_scores.shape != targets.shape
                or gt_scores.requires_grad or targets.device != pred_scores.device
                or not _is_number(self.loss_gain.get("class"))
                or (fl and type(fl) is not focal_cls) or (use_vfl and type(vfl) is not vfl_cls)
                or (not use_vfl and pred_scores.dtype not in (torch.float32, torch.float64))):
            return orig(self, pred_scores, targets, gt_scores, num_gts, postfix)
        nc = pred_scores.shape[-1]
        if self.nc != nc or not ((targets >= 0) & (targets <= nc)).all():
            return orig(self, pred_scores, targets, gt_scores, num_gts, postfix)  # its error
        nq = pred_scores.shape[1]
        if use_vfl:  # ultralytics: in float32 (autocast off), the weight's gradient included
            loss = DF.varifocal_loss(pred_scores.float(), targets, alpha=float(vfl.alpha),
                                     gamma=float(vfl.gamma), score=gt_scores.float(),
                                     reduction="sum") / nq
        elif fl:
            a = fl.alpha
            alpha = float(a) if not isinstance(a, torch.Tensor) else float(a.detach().cpu())
            loss = DF.sigmoid_focal_loss(pred_scores, targets, alpha=alpha if alpha > 0 else None,
                                         gamma=float(fl.gamma), reduction="sum") / nq
        else:
            loss = DF.binary_cross_entropy_with_logits(
                pred_scores, targets, score=gt_scores.to(pred_scores.dtype), reduction="sum") / nq
        if fl:
            loss = loss / (max(num_gts, 1) / nq)
        return {f"loss_class{postfix}": loss.squeeze() * self.loss_gain["class"]}
    return _get_loss_class


def _fused_bbox_iou(*args, **kwargs):
    return DF.bbox_iou(*args, **kwargs)  # DF read at call time (tests spy on it)


def _apply(ps):
    L, T = ps.mods["ultralytics.utils.loss"], ps.mods["ultralytics.utils.tal"]
    det = ps.original(L, "v8DetectionLoss")
    dist2bbox = ps.original(T, "dist2bbox")
    xyxy2xywh = ps.original(L, "xyxy2xywh")
    tal_cls = ps.original(T, "TaskAlignedAssigner")
    seg_cls = ps.original(T, "SegTaskAlignedAssigner")
    rot_cls = ps.original(T, "RotatedTaskAlignedAssigner")
    pose_cls = ps.original(T, "PoseTaskAlignedAssigner")
    make_anchors = ps.original(T, "make_anchors")
    obb = ps.original(L, "v8OBBLoss")
    pose = ps.original(L, "v8PoseLoss")
    pose26 = ps.original(L, "PoseLoss26")
    RL, RO = ps.mods["ultralytics.models.utils.loss"], ps.mods["ultralytics.models.utils.ops"]
    matcher = ps.original(RO, "HungarianMatcher")
    # look every name up before replacing any: a moved name fails before anything changes
    names = [
        (det, "get_assigned_targets_and_loss",
         lambda o: _wrap_assigned(o, tal_cls, seg_cls, pose_cls, make_anchors)),
        (tal_cls, "forward", lambda o: _wrap_tal_forward(o, tal_cls, seg_cls, rot_cls, pose_cls)),
        (det, "__init__", _wrap_det_init),
        (det, "bbox_decode", lambda o: _wrap_bbox_decode(o, dist2bbox)),
        (L, "bbox_iou", lambda o: wrap_bbox_iou(o, _fused_bbox_iou)),
        (T, "bbox_iou", lambda o: wrap_bbox_iou(o, _fused_bbox_iou)),
        (ps.original(L, "v8SegmentationLoss"), "calculate_segmentation_loss",
         lambda o: _wrap_seg_loss(o, xyxy2xywh)),
        (ps.original(L, "v8SegmentationLoss"), "loss",
         lambda o: _wrap_seg_call(o, ps.original(L, "BCEDiceLoss"),
                                  ps.original(L, "MultiChannelDiceLoss"))),
        (obb, "loss", lambda o: _wrap_obb_loss(o, rot_cls, make_anchors,
                                               ps.original(obb, "calculate_angle_loss"))),
        (obb, "bbox_decode", lambda o: _wrap_obb_decode(o, ps.original(T, "dist2rbox"))),
        (L, "probiou", _wrap_probiou),
        (pose, "loss", lambda o: _wrap_pose_loss(o, pose, xyxy2xywh)),
        (pose26, "loss", lambda o: _wrap_pose26_loss(o, pose26, make_anchors, xyxy2xywh)),
        (ps.original(L, "DFLoss"), "__call__", _wrap_dfl_call),
        (ps.original(L, "VarifocalLoss"), "forward", _wrap_vfl_forward),
        (ps.original(L, "FocalLoss"), "forward", _wrap_focal_forward),
        (ps.mods["ultralytics.utils.dist"], "generate_ddp_file", _wrap_ddp_file),
        # RT-DETR
        (RL, "bbox_iou", lambda o: wrap_bbox_iou(o, _fused_bbox_iou)),
        (RO, "bbox_iou", lambda o: wrap_bbox_iou(o, _fused_bbox_iou)),
        (matcher, "forward", lambda o: _wrap_detr_matcher(o, matcher)),
        (ps.original(RL, "DETRLoss"), "_get_loss_class",
         lambda o: _wrap_detr_loss_class(o, ps.original(L, "VarifocalLoss"),
                                         ps.original(L, "FocalLoss"))),
    ]
    ps.original(ps.original(L, "BboxLoss"), "forward")  # calls bbox_iou and DFLoss: must exist
    ps.original(ps.original(L, "RotatedBboxLoss"), "forward")  # calls probiou and DFLoss
    for name in ("kpts_decode", "calculate_keypoints_loss", "_batch_keypoints"):
        ps.original(pose, name)
    for name in ("calculate_rle_loss", "_rle_zero"):
        ps.original(pose26, name)
    ps.original(tal_cls, "iou_calculation")
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
