"""Task-aligned assignment (TOOD; ultralytics' ``TaskAlignedAssigner``), fused: no
``(batch, boxes, anchors)`` tensor is ever built. CPU and CUDA kernels
(``torch.ops.detloss.tal_assign``; the algorithm and its exact rules are in
``csrc/math/assign.h``), memory O(batch·anchors + batch·boxes·topk).

``task_aligned_assign`` returns ultralytics' five outputs, or with ``index=True`` the
per-anchor class index and score that the classification losses take directly
(``detloss_cuda.functional``), so no ``[B, A, C]`` target is built either.
"""
import torch

from . import _ops

__all__ = ["task_aligned_assign", "stride_value", "AssignResult"]


def stride_value(stride=None):
    """ultralytics' ``stride_val``: the middle stride of ``[8, 16, 32]`` (or the only one)."""
    stride = [8, 16, 32] if stride is None else list(stride)
    return float(stride[1] if len(stride) > 1 else stride[0])


class AssignResult(tuple):
    """``(labels, scores)`` of the index form: ``labels [B, A]`` int64, the assigned box's class
    where foreground and ``num_classes`` (background) elsewhere; ``scores [B, A]`` its
    normalised alignment metric (0 for background); plus the other outputs as attributes:
    ``target_bboxes``, ``fg_mask``, ``target_gt_idx``, ``target_labels`` (ultralytics')."""

    def __new__(cls, labels, scores, target_labels, target_bboxes, fg_mask, target_gt_idx):
        self = super().__new__(cls, (labels, scores))
        self.labels, self.scores = labels, scores
        self.target_labels, self.target_bboxes = target_labels, target_bboxes
        self.fg_mask, self.target_gt_idx = fg_mask, target_gt_idx
        return self


def _check(name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"task_aligned_assign: {name} must be a torch.Tensor, got {type(t).__name__}")


def _together(what, **tensors):
    """The tensors of an optional overlap, all given (as a tuple) or none (None)."""
    if all(t is None for t in tensors.values()):
        return None
    names = list(tensors)
    for name, t in tensors.items():
        if t is None:
            raise TypeError(f"task_aligned_assign: {what} needs {', '.join(names[:-1])} and "
                            f"{names[-1]} together; {name} is missing")
        _check(name, t)
    return tuple(tensors.values())


def task_aligned_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, *,
                        topk=13, num_classes=80, alpha=1.0, beta=6.0, stride_val=16.0, eps=1e-9,
                        topk2=None, scores_are_logits=False, index=False, pd_coef=None,
                        mask_scale=None, proto=None, gt_masks=None, rotated=False,
                        anc_strides=None, pd_kpts=None, gt_kpts=None, sigmas=None,
                        level_range=(2.0, 12.0)):
    """ultralytics 8.4's ``TaskAlignedAssigner.forward``, fused; with ``pd_coef``,
    ``mask_scale``, ``proto`` and ``gt_masks``, ``SegTaskAlignedAssigner``'s (the mask-aware
    overlap below).

    Args, as there: ``pd_scores [B, A, C]`` class probabilities (or logits with
    ``scores_are_logits=True``: the sigmoid is taken only where a box's class is read),
    ``pd_bboxes [B, A, 4]`` and ``gt_bboxes [B, M, 4]`` xyxy, ``anc_points [A, 2]``,
    ``gt_labels [B, M, 1]``, ``mask_gt [B, M, 1]``.

    Returns ``(target_labels [B, A] int64, target_bboxes [B, A, 4], target_scores [B, A, C],
    fg_mask [B, A] bool, target_gt_idx [B, A] int64)`` as ultralytics does (for ``M == 0``
    its very outputs, dtypes included), or with ``index=True`` an ``AssignResult``.
    Ties among equal metrics go to the lower anchor index (README: the assigner's contract).

    The mask-aware overlap (YOLO26-seg): ``pd_coef [B, A, nm]`` each anchor's mask
    coefficients, ``mask_scale [B, 1]`` prototype pixels per box pixel, ``proto
    [B, nm, H, W]``, ``gt_masks [B, >= M, H, W]`` bool, box m's mask in row m. The overlap of a
    pair is then (CIoU + mask IoU) / 2, the mask IoU computed for each box's ``3 · topk`` best
    pairs by the box metric only (0 for the others), from the predicted mask ``coef · proto >
    0`` cropped to the predicted box times ``mask_scale``; nothing of size (B, M, A) or
    (pairs, H, W) is built (csrc/math/assign.h: the rules, and where the threshold decides).

    ``rotated=True``: ``RotatedTaskAlignedAssigner``'s (YOLO-OBB): boxes ``[..., 5]`` xywhr
    (radians), an anchor is a candidate of a box when its projections on the box's two sides
    (sides below ``stride_val`` enlarged to it) fall within them, and the overlap is
    ``max(ProbIoU, 0)``; ``target_bboxes`` are ``[B, A, 5]``.

    The keypoint overlap (``PoseTaskAlignedAssigner``, YOLO26-pose), with ``anc_strides [A]``
    each anchor's stride, ``pd_kpts [B, A, K, 2]`` each anchor's keypoints and ``gt_kpts
    [B, >= M, K, 3]`` each box's (x, y, visibility), in pixels, ``sigmas [K]``: a box is a
    candidate of the anchors inside it on the levels whose stride s has ``lo·s <= sqrt(box
    area) <= hi·s`` (``level_range = (lo, hi)``; the finest level open below, the coarsest
    above), or of all the anchors inside it when no such anchor exists; the overlap is the
    OKS of the pair's keypoints (``exp(-d² / ((2·sigma)² · (0.53·area + eps) · 2))`` over the
    visible ones, averaged), the CIoU for a box without a visible keypoint. ``pd_kpts`` is
    read where it lies (a permuted view is not copied).
    """
    for name, t in (("pd_scores", pd_scores), ("pd_bboxes", pd_bboxes), ("anc_points", anc_points),
                    ("gt_labels", gt_labels), ("gt_bboxes", gt_bboxes), ("mask_gt", mask_gt)):
        _check(name, t)
    for name, v in (("topk", topk), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"task_aligned_assign: {name} must be an int, got {type(v).__name__}")
    if topk2 is not None and (isinstance(topk2, bool) or not isinstance(topk2, int)):
        raise TypeError(f"task_aligned_assign: topk2 must be an int or None, got {type(topk2).__name__}")
    if not 1 <= num_classes < 2**31:
        raise ValueError(f"task_aligned_assign: num_classes must be in [1, 2^31), got {num_classes}")
    for name, v in (("alpha", alpha), ("beta", beta), ("stride_val", stride_val), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"task_aligned_assign: {name} must be a number, got {type(v).__name__}")
    seg = _together("the mask-aware overlap", pd_coef=pd_coef, mask_scale=mask_scale, proto=proto,
                    gt_masks=gt_masks)
    pose = _together("the keypoint overlap", anc_strides=anc_strides, pd_kpts=pd_kpts,
                     gt_kpts=gt_kpts, sigmas=sigmas)
    if pose is not None:
        try:
            lo, hi = (float(x) for x in level_range)
        except (TypeError, ValueError):
            raise TypeError("task_aligned_assign: level_range must be two numbers (lo, hi), got "
                            f"{level_range!r}") from None
    if rotated and seg is not None:
        raise ValueError("task_aligned_assign: the mask-aware overlap takes xyxy boxes, not "
                         "rotated ones")
    if pose is not None and (rotated or seg is not None):
        raise ValueError("task_aligned_assign: the keypoint overlap takes xyxy boxes and no masks "
                         f"({'rotated=True' if rotated else 'pd_coef, ... gt_masks'} given)")
    topk2 = topk2 or topk
    if gt_bboxes.dim() == 3 and gt_bboxes.shape[1] == 0 and pd_scores.dim() == 3:
        # ultralytics' early return, dtypes included (float labels and indices)
        if index:
            B, A = pd_scores.shape[:2]
            return AssignResult(
                torch.full((B, A), num_classes, dtype=torch.long, device=pd_scores.device),
                torch.zeros((B, A), dtype=pd_scores.dtype, device=pd_scores.device),
                torch.full_like(pd_scores[..., 0], num_classes), torch.zeros_like(pd_bboxes),
                torch.zeros_like(pd_scores[..., 0], dtype=torch.bool),
                torch.zeros_like(pd_scores[..., 0]))
        return (torch.full_like(pd_scores[..., 0], num_classes), torch.zeros_like(pd_bboxes),
                torch.zeros_like(pd_scores), torch.zeros_like(pd_scores[..., 0], dtype=torch.bool),
                torch.zeros_like(pd_scores[..., 0]))
    params = (topk, topk2, float(alpha), float(beta), float(stride_val), float(eps),
              bool(scores_are_logits))
    if rotated:
        out = _ops.ops.tal_assign_rotated(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                                          mask_gt, *params)
    elif pose is not None:
        out = _ops.ops.tal_assign_pose(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                                       mask_gt, *pose, *params, lo, hi)
    elif seg is None:
        out = _ops.ops.tal_assign(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                                  *params)
    else:
        out = _ops.ops.tal_assign_seg(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                                      mask_gt, *seg, *params)
    labels, bboxes, score, fg, gt_idx = out
    if index:
        return AssignResult(torch.where(fg, labels, num_classes), score, labels, bboxes, fg, gt_idx)
    # ultralytics: one-hot (int8) * fg, times the normalised metric; here one zero fill and
    # one scatter (F.one_hot would build an int64 [B, A, C] first: 86 MB at 16 x 8400 x 80)
    target_scores = torch.zeros((*labels.shape, num_classes), dtype=score.dtype, device=score.device)
    target_scores.scatter_(-1, labels.unsqueeze(-1), (score * fg).unsqueeze(-1))
    return labels, bboxes, target_scores, fg, gt_idx
