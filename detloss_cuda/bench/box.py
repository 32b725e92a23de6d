"""Box rows: the IoU-family losses over box pairs and the pairwise IoU matrix; ProbIoU of
rotated boxes against ultralytics' own functions (where ultralytics is installed)."""
import importlib.util

import torch

from .. import baselines as BL
from .. import functional as DF
from .. import reference as R
from .registry import BenchOp, nbytes as _nbytes


def _box_inputs(size, dtype, device, gen):
    """Box pairs as a detector's box loss sees them: predictions near their targets."""
    n = max(1, size)
    xy = torch.rand(n, 2, generator=gen) * 640
    wh = torch.rand(n, 2, generator=gen) * 120 + 4
    t = torch.cat([xy, xy + wh], -1)
    p = t + torch.randn(n, 4, generator=gen) * 8
    return {"x": p.to(device=device, dtype=dtype), "t": t.to(device=device, dtype=dtype)}


def _box_bytes(inp, mode):
    x, t = inp["x"], inp["t"]
    if mode == "fwd":
        return _nbytes(x, t) + x.element_size()
    return _nbytes(x, t) + _nbytes(x)  # read both boxes, write d/d(pred)


def _box_op(kind):
    return BenchOp(
        name=kind, family="box", unit="box pairs", make=_box_inputs,
        fused=lambda i: DF.iou_loss(i["x"], i["t"], kind, reduction="sum"),
        eager=lambda i: BL.iou_loss(i["x"], i["t"], kind, reduction="sum"),
        reference=lambda i: R.iou_loss(i["x"], i["t"], kind, reduction="sum"),
        bytes_moved=_box_bytes, quick_compile=kind == "giou",
        sizes={"quick": [10**3, 10**5], "cpu": [10**2, 10**3, 10**4, 10**5, 10**6],
               "cuda": [10**2, 10**3, 10**4, 10**5, 10**6, 10**7]},
    )


_MATRIX_M = 64  # ground-truth boxes per image, the assigner's other side


def _matrix_inputs(size, dtype, device, gen):
    n = max(1, size // _MATRIX_M)
    a = _box_inputs(n, dtype, device, gen)["t"]
    b = _box_inputs(_MATRIX_M, dtype, device, gen)["t"]
    return {"x": a, "t": b}


def _matrix_bytes(inp, mode):
    a, b = inp["x"], inp["t"]
    return _nbytes(a, b) + a.shape[0] * b.shape[0] * a.element_size()


def _obb_inputs(size, dtype, device, gen):
    """Rotated box pairs as RotatedBboxLoss sees them (1024 px, sides 8-72, any angle):
    predictions near their targets."""
    n = max(1, size)
    t = torch.cat([torch.rand(n, 2, generator=gen) * 1024, torch.rand(n, 2, generator=gen) * 64 + 8,
                   (torch.rand(n, 1, generator=gen) - 0.5) * 3.14], -1)
    p = t + torch.randn(n, 5, generator=gen) * torch.tensor([4.0, 4.0, 4.0, 4.0, 0.2])
    return {"x": p.to(device=device, dtype=dtype), "t": t.to(device=device, dtype=dtype)}


def _obb_matrix_inputs(size, dtype, device, gen):
    n = max(1, size // _MATRIX_M)
    return {"x": _obb_inputs(n, dtype, device, gen)["t"],
            "t": _obb_inputs(_MATRIX_M, dtype, device, gen)["t"]}


def _probiou_ops():
    """RotatedBboxLoss's box term (floor 0.01) and batch_probiou, against ultralytics'."""
    from ultralytics.utils import metrics as um
    return {
        "probiou": BenchOp(
            name="probiou", family="box", unit="rotated box pairs", make=_obb_inputs,
            fused=lambda i: DF.probiou_loss(i["x"], i["t"], floor=0.01, reduction="sum"),
            eager=lambda i: (1.0 - um.probiou(i["x"], i["t"], floor=0.01)).sum(),
            reference=lambda i: R.probiou_loss(i["x"], i["t"], floor=0.01, reduction="sum"),
            bytes_moved=_box_bytes,
            sizes={"quick": [10**4], "cpu": [10**2, 10**3, 10**4, 10**5, 10**6],
                   "cuda": [10**2, 10**3, 10**4, 10**5, 10**6, 10**7]}),
        "probiou_matrix": BenchOp(
            name="probiou_matrix", family="matrix", unit="matrix entries (N x 64)",
            make=_obb_matrix_inputs, fused=lambda i: DF.batch_probiou(i["x"], i["t"]),
            eager=lambda i: um.batch_probiou(i["x"], i["t"]),
            reference=lambda i: R.box_iou_matrix(i["x"], i["t"], "probiou", "xywhr"),
            bytes_moved=_matrix_bytes, differentiable=False,
            sizes={"quick": [10**4], "cpu": [10**3, 10**4, 10**5, 10**6],
                   "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]}),
    }


def ops():
    out = {kind: _box_op(kind) for kind in ("iou", "giou", "diou", "ciou")}
    if importlib.util.find_spec("ultralytics") is not None:
        out.update(_probiou_ops())
    out["iou_matrix"] = BenchOp(
        name="iou_matrix", family="matrix", unit="matrix entries (N x 64)", make=_matrix_inputs,
        fused=lambda i: DF.box_iou_matrix(i["x"], i["t"]),
        eager=lambda i: BL.box_iou(i["x"], i["t"]),
        reference=lambda i: R.box_iou_matrix(i["x"], i["t"]),
        bytes_moved=_matrix_bytes, differentiable=False, quick_compile=True,
        sizes={"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7],
               "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]},
    )
    return out
