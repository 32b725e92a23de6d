"""torch.library glue for the native ops: their fake (meta) kernels.

The extension registers the schemas and validation (csrc/ops/<family>.cpp), the CPU and
CUDA kernels, the autograd formulas (csrc/ops/autograd.cpp: in C++, for speed: the Python
route costs tens of microseconds a call), whose backward is its own op, and the autocast
policy (csrc/ops/autocast.cpp). This module adds shape inference, which
``torch.compile`` and ``torch.library.opcheck`` need; the extension names it
(``set_python_module``), so torch imports it whenever a fake kernel is asked for.

The fake kernels return the real kernels' layouts, by the rules the C++ follows, written here
once (``cls_class_major``, ``dfl_keeps_bin_major``); ``tests/test_layouts.py`` holds them equal
to the real ops' outputs, on the CPU kernels and on the CUDA drivers (under the SIMT emulator
without a GPU), over every layout the integrations pass. A layout that depends on the device
asks ``driver(tensor)``: ``"cpu"`` or ``"cuda"``, the kernels that serve it.
"""
import functools

import torch

from . import _C  # noqa: F401  (registers the schemas and the CPU/CUDA kernels)

ops = torch.ops.detloss


# ------------------------------------------------------------------------ output layouts
def cls_class_major(input, target, weight=None, pos_weight=None):
    """csrc/ops/cls.cpp (prepare_cls): with class indices and neither weight nor pos_weight,
    logits that are a [..., A, C] view of a contiguous [..., C, A] tensor (a detection head's
    output, permuted) are read in place, and the 'none' loss and the gradient take their
    strides; otherwise the outputs are contiguous."""
    return (target.dtype in (torch.int32, torch.int64) and weight is None and pos_weight is None
            and input.dim() >= 2 and not input.is_contiguous()
            and input.transpose(-1, -2).is_contiguous())


# csrc/ops/layout.h's kDflBinMajorMaxBins: the CPU integral's tiles live on the stack
DFL_BIN_MAJOR_MAX_BINS = _C.dfl_bin_major_max_bins


def dfl_bin_major(pred):
    """csrc/ops/dfl.h's dfl_bin_major_dim >= 0: bins strided (at most DFL_BIN_MAJOR_MAX_BINS),
    rows along a unit-stride leading dim, densely packed (ultralytics' [B, 4R, A] box output,
    permuted and viewed as [B, A, 4, R])."""
    if (pred.dim() < 2 or pred.numel() == 0 or pred.stride(-1) == 1
            or pred.shape[-1] > DFL_BIN_MAJOR_MAX_BINS):
        return False
    expected = 1  # non-overlapping and dense: sorted by stride, each the product below it
    for stride, size in sorted((pred.stride(d), pred.shape[d]) for d in range(pred.dim())
                               if pred.shape[d] != 1):
        if stride != expected:
            return False
        expected *= size
    return any(pred.stride(d) == 1 and pred.shape[d] > 1 for d in range(pred.dim() - 1))


def dfl_keeps_bin_major(pred, driver):
    """The CPU integral reads a bin-major pred in place and writes its gradient in pred's
    strides; everything else (the CUDA integral, both devices' DFL) makes rows of it first."""
    return driver(pred) == "cpu" and dfl_bin_major(pred)


def _like(t, layout_of):
    """An empty tensor shaped like t, strided like `layout_of` (or contiguous)."""
    if layout_of is None:
        return t.new_empty(t.shape)
    return torch.empty_strided(layout_of.shape, layout_of.stride(), dtype=t.dtype, device=t.device)


def _device_type(t):
    return t.device.type


def _tensors(name, value):
    """(argument name, tensor) for a tensor argument, or each tensor of a list of them."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(f"{name}[{i}]", v)


_FAKES = {}  # op name -> fake(driver, *args)


def _register_fake(name):
    """Collects a fake kernel fn(driver, *op_args) for op `name` (registered below)."""
    def deco(fn):
        _FAKES[name] = fn
        return fn
    return deco


def register_fakes(namespace, driver=_device_type):
    """register_fake for every op of `namespace` (torch.ops.detloss; the SIMT emulator's test
    build registers torch.ops.detloss_emu, whose CUDA drivers serve CPU tensors, with
    driver=lambda t: "cuda"), with the device check the C++ kernels make: these kernels also
    serve the Meta dispatch key, which a call reaches when any operand is on the meta device;
    a CPU input with a meta operand would otherwise get a CPU tensor of uninitialised memory
    back."""
    for op, fn in _FAKES.items():
        name = f"{namespace}::{op}"
        arg_names = [a.name for a in getattr(torch.ops, namespace).__getattr__(op).default._schema.arguments]

        def checked(*args, _fn=fn, _name=name, _arg_names=arg_names, **kwargs):
            named = list(zip(_arg_names, args)) + list(kwargs.items())
            tensors = [nt for n, v in named for nt in _tensors(n, v)]
            for arg, t in tensors[1:]:
                ref_arg, ref = tensors[0]
                if t.device != ref.device:
                    raise ValueError(f"{_name.replace('::', '.')}: {arg} is on {t.device} but "
                                     f"{ref_arg} is on {ref.device}; all tensors must be on "
                                     "one device")
            return _fn(driver, *args, **kwargs)
        torch.library.register_fake(name)(functools.wraps(fn)(checked))


# ---------------------------------------------------------------------------- cls family
def _cls_shape_check(input, target):
    if target.dtype in (torch.int64, torch.int32):
        torch._check(
            input.dim() >= 1 and target.shape == input.shape[:-1],
            lambda: f"detloss.cls_loss: target holds class indices, so its shape must be "
            f"input.shape[:-1] = {tuple(input.shape[:-1])}, got {tuple(target.shape)}",
        )
    else:
        torch._check(
            target.shape == input.shape,
            lambda: f"detloss.cls_loss: target of shape {tuple(target.shape)} must have the "
            f"shape of input {tuple(input.shape)}",
        )


def _cls_like_input(input, target, weight, pos_weight):
    """csrc/ops/cls.cpp's cls_like_input: the 'none' loss and the gradient."""
    return _like(input, input if cls_class_major(input, target, weight, pos_weight) else None)


@_register_fake("cls_loss")
def _cls_loss_fake(driver, input, target, weight, pos_weight, label, kind, alpha, gamma,
                   reduction, score=None, label_smoothing=0.0, ignore_index=-100):
    _cls_shape_check(input, target)
    if reduction == "none":
        return _cls_like_input(input, target, weight, pos_weight)
    return input.new_empty(())


@_register_fake("cls_loss_with_grad")
def _cls_loss_with_grad_fake(driver, input, target, weight, pos_weight, label, kind, alpha,
                             gamma, reduction, score=None, label_smoothing=0.0, ignore_index=-100):
    loss = _cls_loss_fake(driver, input, target, weight, pos_weight, label, kind, alpha, gamma,
                          reduction)
    return loss, _cls_like_input(input, target, weight, pos_weight)


@_register_fake("cls_backward")
def _cls_backward_fake(driver, grad, input, target, weight, pos_weight, label, kind, alpha,
                       gamma, reduction, score=None, label_smoothing=0.0, ignore_index=-100):
    return _cls_like_input(input, target, weight, pos_weight)


# ---------------------------------------------------------------------------- box family
def _box_shape(pred, target, box_format):
    r = 5 if box_format == "xywhr" else 4
    torch._check(pred.dim() >= 1 and pred.shape[-1] == r,
                 lambda: f"detloss.box_loss: pred must have shape [..., {r}], got {tuple(pred.shape)}")
    torch._check(target.dim() >= 1 and target.shape[-1] == r,
                 lambda: f"detloss.box_loss: target must have shape [..., {r}], got {tuple(target.shape)}")
    return torch.broadcast_shapes(pred.shape[:-1], target.shape[:-1]), r


@_register_fake("box_loss")
def _box_loss_fake(driver, pred, target, weight, kind, box_format, eps, reduction, floor=0.0):
    shape, _ = _box_shape(pred, target, box_format)
    return pred.new_empty(shape if reduction == "none" else ())


@_register_fake("box_loss_with_grad")
def _box_loss_with_grad_fake(driver, pred, target, weight, kind, box_format, eps, reduction,
                             output_mask, floor=0.0):
    shape, r = _box_shape(pred, target, box_format)
    return (_box_loss_fake(driver, pred, target, weight, kind, box_format, eps, reduction),
            pred.new_empty((*shape, r)) if output_mask[0] else None,
            pred.new_empty((*shape, r)) if output_mask[1] else None)


@_register_fake("box_backward")
def _box_backward_fake(driver, grad, pred, target, weight, kind, box_format, eps, reduction,
                       output_mask, floor=0.0):
    shape, r = _box_shape(pred, target, box_format)
    return (pred.new_empty((*shape, r)) if output_mask[0] else None,
            pred.new_empty((*shape, r)) if output_mask[1] else None)


@_register_fake("box_iou_matrix")
def _box_iou_matrix_fake(driver, boxes1, boxes2, kind, box_format, eps, floor=0.0):
    dtype = torch.result_type(boxes1, boxes2)
    if not dtype.is_floating_point:
        dtype = torch.float32
    shape = boxes1.shape[:-1] + boxes2.shape[-2:-1]
    return boxes1.new_empty(shape, dtype=dtype)


# ---------------------------------------------------------------------------- dfl family
@_register_fake("dfl_loss")
def _dfl_loss_fake(driver, pred, target, weight, reduction):
    torch._check(pred.dim() >= 1 and pred.shape[-1] >= 2,
                 lambda: f"detloss.dfl_loss: DFL needs at least 2 bins, got pred of shape {tuple(pred.shape)}")
    torch._check(target.shape == pred.shape[:-1] or target.shape == (*pred.shape[:-1], 2),
                 lambda: f"detloss.dfl_loss: target of shape {tuple(target.shape)} must have the "
                 f"leading shape of pred {tuple(pred.shape)}, or that and 2")
    loss = pred.new_empty(pred.shape[:-1] if reduction == "none" else ())
    return loss, pred.new_empty((*pred.shape[:-1], 2), dtype=_opmath(pred.dtype))


@_register_fake("dfl_loss_with_grad")
def _dfl_loss_with_grad_fake(driver, pred, target, weight, reduction):
    loss, lse = _dfl_loss_fake(driver, pred, target, weight, reduction)
    return loss, lse, pred.new_empty(pred.shape)


@_register_fake("dfl_backward")
def _dfl_backward_fake(driver, grad, pred, target, stats, weight, reduction):
    return pred.new_empty(pred.shape)


@_register_fake("dfl_integral")
def _dfl_integral_fake(driver, pred):
    torch._check(pred.dim() >= 1 and pred.shape[-1] >= 2,
                 lambda: f"detloss.dfl_integral: needs at least 2 bins, got pred of shape {tuple(pred.shape)}")
    return (pred.new_empty(pred.shape[:-1]),
            pred.new_empty((*pred.shape[:-1], 2), dtype=_opmath(pred.dtype)))


@_register_fake("dfl_integral_backward")
def _dfl_integral_backward_fake(driver, grad, pred, stats):
    # torch.compile plans the buffers it hands on from these strides
    return _like(pred, pred if dfl_keeps_bin_major(pred, driver) else None)


@_register_fake("dfl_kl")
def _dfl_kl_fake(driver, pred, teacher, temperature):
    torch._check(pred.dim() >= 1 and pred.shape[-1] >= 2,
                 lambda: f"detloss.dfl_kl: pred must have shape [..., R] with 2 <= R bins, got {tuple(pred.shape)}")
    torch._check(teacher.shape == pred.shape,
                 lambda: f"detloss.dfl_kl: teacher must have pred's shape {tuple(pred.shape)}, got "
                 f"{tuple(teacher.shape)}")
    return (pred.new_empty(pred.shape[:-1]),
            pred.new_empty((*pred.shape[:-1], 2), dtype=_opmath(pred.dtype)))


@_register_fake("dfl_kl_backward")
def _dfl_kl_backward_fake(driver, grad, pred, teacher, stats, temperature):
    return pred.new_empty(pred.shape)


def _opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------- assigner
@_register_fake("detr_match_cost")
def _detr_match_cost_fake(driver, logits, pred_boxes, target_labels, target_boxes, sizes,
                          class_kind, class_cost, bbox_cost, giou_cost, alpha, gamma,
                          convention="transformers"):
    torch._check(logits.dim() == 3, lambda: "detloss.detr_match_cost: logits must be [B, Q, C]")
    dtype = torch.promote_types(torch.result_type(logits, pred_boxes), target_boxes.dtype)
    B, Q = logits.shape[:2]
    return logits.new_empty((B, Q, max(sizes, default=0)), dtype=dtype)


@_register_fake("tal_assign")
def _tal_assign_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                     topk, topk2, alpha, beta, stride_val, eps, scores_are_logits):
    torch._check(pd_scores.dim() == 3, lambda: "detloss.tal_assign: pd_scores must be [B, A, C]")
    B, A = pd_scores.shape[:2]
    out = torch.promote_types(pd_scores.dtype, torch.promote_types(pd_bboxes.dtype, gt_bboxes.dtype))
    return (pd_scores.new_empty((B, A), dtype=torch.long),
            gt_bboxes.new_empty((B, A, gt_bboxes.shape[-1])),
            pd_scores.new_empty((B, A), dtype=out),
            pd_scores.new_empty((B, A), dtype=torch.bool),
            pd_scores.new_empty((B, A), dtype=torch.long))


@_register_fake("tal_assign_rotated")
def _tal_assign_rotated_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes,
                             mask_gt, topk, topk2, alpha, beta, stride_val, eps, scores_are_logits):
    return _tal_assign_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            topk, topk2, alpha, beta, stride_val, eps, scores_are_logits)


@_register_fake("tal_assign_seg")
def _tal_assign_seg_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                         pd_coef, mask_scale, proto, gt_masks, topk, topk2, alpha, beta,
                         stride_val, eps, scores_are_logits):
    return _tal_assign_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            topk, topk2, alpha, beta, stride_val, eps, scores_are_logits)


@_register_fake("tal_assign_pose")
def _tal_assign_pose_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                          anc_strides, pd_kpts, gt_kpts, sigmas, topk, topk2, alpha, beta,
                          stride_val, eps, scores_are_logits, level_lo, level_hi):
    return _tal_assign_fake(driver, pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt,
                            topk, topk2, alpha, beta, stride_val, eps, scores_are_logits)


# --------------------------------------------------------------------------- mask family
# The kernels return the loss (coef's leading shape for 'none', else 0-dim) and contiguous gradients shaped
# like coef [P, nm] and proto [B, nm, H, W], whatever their inputs' strides.
@_register_fake("prototype_mask_loss")
def _mask_loss_fake(driver, coef, proto, batch_index, boxes, area, masks, mask_index, overlap,
                    reduction, positive=None):
    torch._check(coef.dim() >= 1, lambda: "detloss.prototype_mask_loss: coef must have shape "
                 f"[..., nm], got {tuple(coef.shape)}")
    torch._check(proto.dim() == 4, lambda: "detloss.prototype_mask_loss: proto must have shape "
                 f"[B, nm, H, W], got {tuple(proto.shape)}")
    return coef.new_empty(coef.shape[:-1] if reduction == "none" else ())


@_register_fake("prototype_mask_loss_with_grad")
def _mask_loss_with_grad_fake(driver, coef, proto, batch_index, boxes, area, masks, mask_index,
                              overlap, reduction, positive=None):
    loss = _mask_loss_fake(driver, coef, proto, batch_index, boxes, area, masks, mask_index,
                           overlap, reduction)
    return loss, coef.new_empty(coef.shape), proto.new_empty(proto.shape)


@_register_fake("prototype_mask_backward")
def _mask_backward_fake(driver, grad, coef, proto, batch_index, boxes, area, masks, mask_index,
                        overlap, reduction, positive=None):
    return coef.new_empty(coef.shape), proto.new_empty(proto.shape)

register_fakes("detloss")
