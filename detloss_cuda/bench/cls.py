"""Classification rows: dense targets (bce, focal, qfl, vfl) and class-index targets
(*_idx: labels and scores, raced against the eager code that builds the one-hot first and
against the fused op given that dense target)."""
import torch

from .. import baselines as BL
from .. import functional as DF
from .. import reference as R
from .registry import BenchOp, nbytes as _nbytes


def _cls_inputs(size, dtype, device, gen, num_classes=80):
    """Detector-like classification inputs: [anchors, classes] logits, targets mostly 0
    with ~1% positives carrying IoU-like soft scores."""
    n = max(1, size // num_classes)
    x = torch.randn(n, num_classes, generator=gen) * 2 - 3  # most anchors confidently negative
    u = torch.rand(n, num_classes, generator=gen)
    t = torch.where(u < 0.01, torch.rand(n, num_classes, generator=gen), torch.zeros_like(u))
    return {"x": x.to(device=device, dtype=dtype), "t": t.to(device=device, dtype=dtype)}


def _cls_bytes(inp, mode):
    x, t = inp["x"], inp["t"]
    if mode == "fwd":
        return _nbytes(x, t) + x.element_size()  # read x, t; write one scalar
    return _nbytes(x, t) + _nbytes(x)  # read x, t; write d/dx (the loss scalar is noise)


def _cls_idx_inputs(size, dtype, device, gen, num_classes=80):
    """The same logits with what an assigner produces: one class per anchor (background C
    for ~95% of them) and a soft score; the dense target they stand for rides along for the
    dense fused op."""
    x = _cls_inputs(size, dtype, device, gen, num_classes)["x"]
    n = x.shape[0]
    lab = torch.randint(0, num_classes, (n,), generator=gen)
    lab = torch.where(torch.rand(n, generator=gen) < 0.05, lab, torch.full_like(lab, num_classes))
    score = torch.rand(n, generator=gen).to(device=device, dtype=dtype)
    lab = lab.to(device)
    return {"x": x, "labels": lab, "score": score, "t": BL.dense_target(x, lab, score)}


def _cls_idx_bytes(inp, mode):
    x = inp["x"]
    read = _nbytes(x, inp["labels"], inp["score"])
    return read + (x.element_size() if mode == "fwd" else _nbytes(x))


_CLS = {
    "bce": ("binary_cross_entropy_with_logits", {}),
    "focal": ("sigmoid_focal_loss", {"alpha": 0.25, "gamma": 2.0}),
    "qfl": ("quality_focal_loss", {"gamma": 2.0}),
    "vfl": ("varifocal_loss", {"alpha": 0.75, "gamma": 2.0}),
}


def _cls_op(name):
    fn, kw = _CLS[name]
    fused, eager = getattr(DF, fn), getattr(BL, fn)
    return BenchOp(
        name=name, family="cls", unit="elements", make=_cls_inputs,
        fused=lambda i: fused(i["x"], i["t"], reduction="sum", **kw),
        eager=lambda i: eager(i["x"], i["t"], reduction="sum", **kw),
        reference=lambda i: getattr(R, fn)(i["x"], i["t"], reduction="sum", **kw),
        bytes_moved=_cls_bytes, quick_compile=name == "focal",
        sizes={"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7],
               "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]},
    )


def _cls_idx_op(name):
    fn, kw = _CLS[name]
    fused, eager_dense = getattr(DF, fn), getattr(BL, fn)
    if name == "qfl":  # mmdet takes (label, score) itself
        eager = lambda i: BL.quality_focal_loss_label(i["x"], i["labels"], i["score"], **kw)  # noqa: E731
    elif name == "vfl":  # ultralytics: positives are the one-hot's ones
        eager = lambda i: eager_dense(i["x"], BL.dense_target(i["x"], i["labels"], i["score"]), **kw)  # noqa: E731
    else:
        eager = lambda i: eager_dense(i["x"], BL.dense_target(i["x"], i["labels"], i["score"]), **kw)  # noqa: E731
    return BenchOp(
        name=f"{name}_idx", family="cls_idx", unit="elements", make=_cls_idx_inputs,
        fused=lambda i: fused(i["x"], i["labels"], score=i["score"], reduction="sum", **kw),
        eager=eager,
        reference=lambda i: getattr(R, fn)(i["x"], i["labels"], score=i["score"], reduction="sum", **kw),
        bytes_moved=_cls_idx_bytes, quick_compile=name == "focal",
        extra={"dense": lambda i: fused(i["x"], i["t"], reduction="sum", **kw)},
        sizes={"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7],
               "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]},
    )


def ops():
    out = {name: _cls_op(name) for name in _CLS}
    out.update({f"{name}_idx": _cls_idx_op(name) for name in _CLS})
    return out
