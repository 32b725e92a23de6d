"""Mask rows: the prototype mask loss of YOLO segmentation against ultralytics' per-image loop
(baselines.prototype_mask_loss). B = 16 images, nm = 32 prototypes of 160 x 160 (640 px
input), `size` objects an image with 10 positives each (ultralytics' topk), boxes of 5–30%
of the image a side; overlap_mask's instance-index maps. Time and peak memory."""
import torch

from .. import baselines as BL
from .. import functional as DF
from .. import reference as R
from .registry import BenchOp, nbytes as _nbytes

B, NM, HW, TOPK = 16, 32, 160, 10


def mask_inputs(size, dtype, device, gen):
    objs = max(1, int(size))
    n = B * objs  # objects
    xy = torch.rand(n, 2, generator=gen) * 0.7 + 0.15
    wh = torch.rand(n, 2, generator=gen) * 0.25 + 0.05
    box = torch.cat([xy - wh / 2, xy + wh / 2], 1).clamp(0, 1)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    img = torch.arange(B).repeat_interleave(objs)
    obj = torch.arange(objs).repeat(B)
    masks = torch.zeros(B, HW, HW)
    for b, o, bb in zip(img.tolist(), obj.tolist(), (box * HW).round().long().tolist()):
        masks[b, bb[1]:bb[3], bb[0]:bb[2]] = o + 1  # later objects cover earlier ones
    rep = lambda t: t.repeat_interleave(TOPK, 0)  # noqa: E731 (10 positives an object)
    coef = torch.randn(n * TOPK, NM, generator=gen)
    proto = torch.randn(B, NM, HW, HW, generator=gen)
    d = dict(device=device)
    coef, proto = coef.to(dtype=dtype, **d), proto.to(dtype=dtype, **d)
    return {"x": coef, "proto": proto, "grad_leaves": [coef, proto], "bi": rep(img).to(**d),
            "boxes": (rep(box) * HW).to(**d), "area": rep(area).to(**d), "masks": masks.to(**d),
            "mi": rep(obj).to(**d)}


def _args(i):
    return i["x"], i["proto"], i["bi"], i["boxes"], i["area"], i["masks"], i["mi"]


def _bytes(inp, mode):
    # coef, the prototypes and the masks read; in fwd+bwd both gradients written
    base = _nbytes(inp["x"], inp["proto"], inp["masks"])
    return base if mode == "fwd" else base + _nbytes(inp["x"], inp["proto"])


def ops():
    return {
        "mask_loss": BenchOp(
            name="mask_loss", family="mask", unit="objects an image (16 images, 10 positives each)",
            make=mask_inputs,
            fused=lambda i: DF.prototype_mask_loss(*_args(i), True, "sum"),
            eager=lambda i: BL.prototype_mask_loss(*_args(i)),
            reference=lambda i: R.prototype_mask_loss(*_args(i), True, "sum"),
            bytes_moved=_bytes,
            sizes={"quick": [4], "cpu": [8, 32, 100], "cuda": [8, 32, 100]}),
    }
