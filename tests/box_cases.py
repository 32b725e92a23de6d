"""Shared cases of the box family's tests: the kinds and formats, plausible boxes, the dtype
tolerance scaled for the box formulas, and the parity check against the reference."""
import torch

import detloss_cuda.functional as DF
import detloss_cuda.reference as R
from conftest import assert_close_dtype as _assert_close_dtype

# Box formulas run ~40 operations and their gradients sum terms of either sign (min/max,
# width, union, enclosing box, centre distance; xywh adds two more): five times the
# arithmetic budget of the ~10-operation classification formulas.
BOX_OPS = 5


def assert_close_dtype(actual, expected, dtype, msg=""):
    _assert_close_dtype(actual, expected, dtype, msg, ops=BOX_OPS)

KINDS = ["iou", "giou", "diou", "ciou"]
FORMATS = ["xyxy", "xywh"]


def boxes(shape, fmt="xyxy", dtype=torch.float64, scale=10.0, gen=None):
    """Plausible boxes: corners in [0, scale), sizes in (0.1, scale/2)."""
    xy = torch.rand(*shape, 2, dtype=torch.float64, generator=gen) * scale
    wh = torch.rand(*shape, 2, dtype=torch.float64, generator=gen) * (scale / 2) + 0.1
    b = torch.cat([xy + wh / 2, wh], -1) if fmt == "xywh" else torch.cat([xy, xy + wh], -1)
    return b.to(dtype)


def near(b, jitter=0.3):
    """Targets that overlap their predictions (the case a detector trains on)."""
    return b + torch.randn_like(b) * jitter


def without_rounding_ties(p, t, fmt, dtype):
    """Rows of (p, t) whose edge orderings survive the kernel's rounding. In xywh the kernel
    forms the corners x -+ w/2 in its compute type (float32 for fp32/fp16/bf16), the
    reference in float64: where a predicted and a target edge lie within a few ulps, the two
    may order them differently, and min/max then send that edge's gradient to the other box
    (the loss is not differentiable at a tie), a difference no tolerance should absorb.
    xyxy corners are inputs, rounded identically by both."""
    if fmt != "xywh":
        return p, t
    q, r = p.to(dtype).double(), t.to(dtype).double()
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    cq, cr = (torch.stack(R._xyxy(b, "xywh"), -1) for b in (q, r))  # the oracle's corners
    ulp = torch.finfo(compute).eps * torch.maximum(cq.abs(), cr.abs())
    keep = ((cq - cr).abs() > 8 * ulp).all(-1)
    return p[keep], t[keep]


def check_parity(kind, fmt, p64, t64, dtype, device, reduction, weight=None, g64=None,
                 grads=(True, True)):
    p = p64.to(dtype).to(device).requires_grad_(grads[0])
    t = t64.to(dtype).to(device).requires_grad_(grads[1])
    pr = p.detach().double().cpu().requires_grad_(grads[0])
    tr = t.detach().double().cpu().requires_grad_(grads[1])
    w = None if weight is None else weight.to(dtype).to(device)
    wr = None if weight is None else w.double().cpu()
    out = DF.iou_loss(p, t, kind, fmt, reduction=reduction, weight=w)
    ref = R.iou_loss(pr, tr, kind, fmt, reduction=reduction, weight=wr)
    msg = f"{kind} {fmt} {tuple(p.shape)}x{tuple(t.shape)} {dtype} {device} {reduction}"
    assert out.dtype == dtype and out.shape == ref.shape, msg
    assert_close_dtype(out, ref, dtype, "value " + msg)
    if g64 is None:
        g64 = torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.ones(())
    inputs = [x for x, need in ((p, grads[0]), (t, grads[1])) if need]
    rinputs = [x for x, need in ((pr, grads[0]), (tr, grads[1])) if need]
    g = torch.autograd.grad(out, inputs, g64.to(dtype).to(device))
    gr = torch.autograd.grad(ref, rinputs, g64.to(dtype).double())
    for a, b, name in zip(g, gr, ("pred", "target")):
        assert a.shape == b.shape and a.dtype == dtype
        assert_close_dtype(a, b, dtype, f"grad {name} " + msg)
    return out, g


