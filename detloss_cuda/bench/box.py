"""Box rows: the IoU-family losses over box pairs and the pairwise IoU matrix."""
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


def ops():
    out = {kind: _box_op(kind) for kind in ("iou", "giou", "diou", "ciou")}
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
