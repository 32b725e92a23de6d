"""Shared cases of the classification family's tests: the kinds, their functions and default
parameters, detector-like targets, and the parity check against the reference."""
import torch

import detloss_cuda.functional as DF
import detloss_cuda.reference as R
from conftest import assert_close_dtype


KINDS = ["bce", "focal", "qfl", "vfl"]
NAMES = {
    "bce": "binary_cross_entropy_with_logits",
    "focal": "sigmoid_focal_loss",
    "qfl": "quality_focal_loss",
    "vfl": "varifocal_loss",
}
DEFAULT_PARAMS = {
    "bce": {},
    "focal": dict(alpha=0.25, gamma=2.0),
    "qfl": dict(alpha=None, gamma=2.0),
    "vfl": dict(alpha=0.75, gamma=2.0),
}


def loss(module, kind, x, t, reduction="mean", weight=None, **params):
    fn = getattr(module, NAMES[kind])
    kw = dict(DEFAULT_PARAMS[kind])
    kw.update(params)
    return fn(x, t, reduction=reduction, weight=weight, **kw)


def targets(shape, kind, dtype=torch.float64):
    """Detector-like targets: mostly 0, some soft (IoU-like) scores, some exact 1s."""
    u = torch.rand(shape, dtype=torch.float64)
    soft = torch.rand(shape, dtype=torch.float64)
    t = torch.where(u < 0.15, soft, torch.zeros_like(u))
    t = torch.where(u > 0.97, torch.ones_like(u), t)
    if kind in ("bce", "focal") and t.numel():
        t = torch.where(u < 0.05, (u * 20).round().clamp(0, 1), t)
    return t.to(dtype)


def check_parity(kind, shape, dtype, device, reduction, weight=None, scale=3.0, x64=None,
                 t64=None, g64=None, **params):
    x64 = torch.randn(shape, dtype=torch.float64) * scale if x64 is None else x64
    t64 = targets(shape, kind) if t64 is None else t64
    x = x64.to(dtype).to(device).requires_grad_()
    t = t64.to(dtype).to(device)
    xr = x.detach().double().cpu().requires_grad_()
    tr = t.double().cpu()
    w = None if weight is None else weight.to(dtype).to(device)
    wr = None if weight is None else w.double().cpu()

    out = loss(DF, kind, x, t, reduction, w, **params)
    ref = loss(R, kind, xr, tr, reduction, wr, **params)
    assert out.dtype == dtype and out.device.type == device
    assert out.shape == ref.shape
    msg = f"{kind} {tuple(shape)} {dtype} {device} {reduction} {params}"
    assert_close_dtype(out, ref, dtype, "value " + msg)

    if g64 is None:
        g64 = torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.ones(())
    g = g64.to(dtype)
    (gx,) = torch.autograd.grad(out, x, g.to(device))
    (gr,) = torch.autograd.grad(ref, xr, g.double())
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close_dtype(gx, gr, dtype, "grad " + msg)
    return out, gx
