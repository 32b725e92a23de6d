"""torch.library glue for the native ops: their fake (meta) kernels.

The extension registers the schemas, the CPU and CUDA kernels, and (in C++, for speed: the
Python route cost ~70 us per call) the autograd formulas, whose backward is its own op, and
the autocast policy (csrc/ops/<family>.cpp). This module adds shape inference, which
``torch.compile`` and ``torch.library.opcheck`` need; the extension names it
(``set_python_module``), so torch imports it whenever a fake kernel is asked for.
"""
import functools

import torch

from . import _C  # noqa: F401  (registers the schemas and the CPU/CUDA kernels)

ops = torch.ops.detloss


def _tensors(name, value):
    """(argument name, tensor) for a tensor argument, or each tensor of a list of them."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(f"{name}[{i}]", v)


def _register_fake(name):
    """register_fake, with the device check the C++ kernels make: these kernels also serve
    the Meta dispatch key, which a call reaches when any operand is on the meta device; a CPU
    input with a meta operand would otherwise get a CPU tensor of uninitialised memory back."""
    def deco(fn):
        ns, op = name.split("::")
        arg_names = [a.name for a in getattr(torch.ops, ns).__getattr__(op).default._schema.arguments]

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            named = list(zip(arg_names, args)) + list(kwargs.items())
            tensors = [nt for n, v in named for nt in _tensors(n, v)]
            for arg, t in tensors[1:]:
                ref_arg, ref = tensors[0]
                if t.device != ref.device:
                    raise ValueError(f"{name.replace('::', '.')}: {arg} is on {t.device} but "
                                     f"{ref_arg} is on {ref.device}; all tensors must be on "
                                     "one device")
            return fn(*args, **kwargs)
        torch.library.register_fake(name)(checked)
        return fn
    return deco


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


@_register_fake("detloss::cls_loss")
def _cls_loss_fake(input, target, weight, pos_weight, label, kind, alpha, gamma, reduction,
                   score=None, smoothing=0.0, ignore_index=-100):
    _cls_shape_check(input, target)
    if reduction == "none":
        return input.new_empty(input.shape)
    return input.new_empty(())


@_register_fake("detloss::cls_loss_with_grad")
def _cls_loss_with_grad_fake(input, target, weight, pos_weight, label, kind, alpha, gamma,
                             reduction, score=None, smoothing=0.0, ignore_index=-100):
    loss = _cls_loss_fake(input, target, weight, pos_weight, label, kind, alpha, gamma, reduction)
    return loss, input.new_empty(input.shape)


@_register_fake("detloss::cls_backward")
def _cls_backward_fake(grad, input, target, weight, pos_weight, label, kind, alpha, gamma,
                       reduction, score=None, smoothing=0.0, ignore_index=-100):
    return input.new_empty(input.shape)


# ---------------------------------------------------------------------------- box family
def _box_shape(pred, target):
    torch._check(pred.dim() >= 1 and pred.shape[-1] == 4,
                 lambda: f"detloss.box_loss: pred must have shape [..., 4], got {tuple(pred.shape)}")
    torch._check(target.dim() >= 1 and target.shape[-1] == 4,
                 lambda: f"detloss.box_loss: target must have shape [..., 4], got {tuple(target.shape)}")
    return torch.broadcast_shapes(pred.shape[:-1], target.shape[:-1])


@_register_fake("detloss::box_loss")
def _box_loss_fake(pred, target, weight, kind, box_format, eps, reduction):
    shape = _box_shape(pred, target)
    return pred.new_empty(shape if reduction == "none" else ())


@_register_fake("detloss::box_loss_with_grad")
def _box_loss_with_grad_fake(pred, target, weight, kind, box_format, eps, reduction, output_mask):
    shape = (*_box_shape(pred, target), 4)
    return (_box_loss_fake(pred, target, weight, kind, box_format, eps, reduction),
            pred.new_empty(shape) if output_mask[0] else None,
            pred.new_empty(shape) if output_mask[1] else None)


@_register_fake("detloss::box_backward")
def _box_backward_fake(grad, pred, target, weight, kind, box_format, eps, reduction,
                       output_mask):
    shape = (*_box_shape(pred, target), 4)
    return (pred.new_empty(shape) if output_mask[0] else None,
            pred.new_empty(shape) if output_mask[1] else None)


@_register_fake("detloss::box_iou_matrix")
def _box_iou_matrix_fake(boxes1, boxes2, kind, box_format, eps):
    dtype = torch.result_type(boxes1, boxes2)
    if not dtype.is_floating_point:
        dtype = torch.float32
    shape = boxes1.shape[:-1] + boxes2.shape[-2:-1]
    return boxes1.new_empty(shape, dtype=dtype)


# ---------------------------------------------------------------------------- dfl family
@_register_fake("detloss::dfl_loss")
def _dfl_loss_fake(pred, target, weight, reduction):
    torch._check(pred.dim() >= 1 and pred.shape[-1] >= 2,
                 lambda: f"detloss.dfl_loss: DFL needs at least 2 bins, got pred of shape {tuple(pred.shape)}")
    torch._check(target.shape == pred.shape[:-1],
                 lambda: f"detloss.dfl_loss: target of shape {tuple(target.shape)} must have the "
                 f"leading shape of pred {tuple(pred.shape)}")
    loss = pred.new_empty(pred.shape[:-1] if reduction == "none" else ())
    return loss, pred.new_empty((*pred.shape[:-1], 2), dtype=_opmath(pred.dtype))


@_register_fake("detloss::dfl_loss_with_grad")
def _dfl_loss_with_grad_fake(pred, target, weight, reduction):
    loss, lse = _dfl_loss_fake(pred, target, weight, reduction)
    return loss, lse, pred.new_empty(pred.shape)


@_register_fake("detloss::dfl_backward")
def _dfl_backward_fake(grad, pred, target, stats, weight, reduction):
    return pred.new_empty(pred.shape)


@_register_fake("detloss::dfl_integral")
def _dfl_integral_fake(pred):
    torch._check(pred.dim() >= 1 and pred.shape[-1] >= 2,
                 lambda: f"detloss.dfl_integral: needs at least 2 bins, got pred of shape {tuple(pred.shape)}")
    return (pred.new_empty(pred.shape[:-1]),
            pred.new_empty((*pred.shape[:-1], 2), dtype=_opmath(pred.dtype)))


def _bin_major(pred):
    """csrc/ops/dfl.h's dfl_bin_major_dim, on the CPU where the kernel keeps that layout:
    bins strided (at most 32), rows along a unit-stride leading dim, densely packed."""
    if (pred.device.type != "cpu" or pred.dim() < 2 or pred.numel() == 0 or pred.stride(-1) == 1
            or pred.shape[-1] > 32):
        return False
    expected = 1  # densely packed: sorted by stride, each dim's stride the product below it
    for stride, size in sorted((pred.stride(d), pred.shape[d]) for d in range(pred.dim())
                               if pred.shape[d] != 1):
        if stride != expected:
            return False
        expected *= size
    return any(pred.stride(d) == 1 and pred.shape[d] > 1 for d in range(pred.dim() - 1))


@_register_fake("detloss::dfl_integral_backward")
def _dfl_integral_backward_fake(grad, pred, stats):
    # the kernel's layout: pred's own strides for a bin-major pred on the CPU, else contiguous
    # (torch.compile plans the buffers it hands on from these strides)
    if _bin_major(pred):
        return torch.empty_strided(pred.shape, pred.stride(), dtype=pred.dtype, device=pred.device)
    return pred.new_empty(pred.shape)


def _opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------- assigner
@_register_fake("detloss::tal_assign")
def _tal_assign_fake(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt, topk,
                     topk2, alpha, beta, stride_val, eps, scores_are_logits):
    torch._check(pd_scores.dim() == 3, lambda: "detloss.tal_assign: pd_scores must be [B, A, C]")
    B, A = pd_scores.shape[:2]
    out = torch.promote_types(pd_scores.dtype, torch.promote_types(pd_bboxes.dtype, gt_bboxes.dtype))
    return (pd_scores.new_empty((B, A), dtype=torch.long),
            gt_bboxes.new_empty((B, A, 4)),
            pd_scores.new_empty((B, A), dtype=out),
            pd_scores.new_empty((B, A), dtype=torch.bool),
            pd_scores.new_empty((B, A), dtype=torch.long))
