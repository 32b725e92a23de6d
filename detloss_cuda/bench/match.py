"""The matcher row: the DETR family's Hungarian matching, fused (``detloss_cuda.match``: the
per-image cost in one kernel, one host copy of the blocks, SciPy) against transformers' own
``DeformableDetrHungarianMatcher`` (the focal cost, as Deformable DETR, RT-DETR and LW-DETR
match): 16 images, 300 queries, 80 classes, ``size`` targets an image."""
import importlib.util

import torch

from .registry import BenchOp, nbytes as _nbytes


def _inputs(size, dtype, device, gen):
    B, Q, C, n = 16, 300, 80, max(1, int(size))
    logits = (torch.randn(B, Q, C, generator=gen) - 2).to(device=device, dtype=dtype)
    box = lambda *s: torch.cat([torch.rand(*s, 2, generator=gen) * 0.8 + 0.1,
                                torch.rand(*s, 2, generator=gen) * 0.2 + 0.02], -1)
    pb = box(B, Q).to(device=device, dtype=dtype)
    targets = [{"class_labels": torch.randint(0, C, (n,), generator=gen).to(device),
                "boxes": box(n).to(device=device, dtype=dtype)} for _ in range(B)]
    return {"x": logits, "pb": pb, "targets": targets}


def _bytes(inp, mode):
    # read: logits, boxes, targets; written: each image's Q x T block (the libraries' minimum)
    x, pb = inp["x"], inp["pb"]
    n = sum(len(t["boxes"]) for t in inp["targets"])
    return _nbytes(x, pb) + n * 40 + x.shape[1] * n * x.element_size()


_M = {}


def _matcher():
    if "m" not in _M:
        from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher

        _M["m"] = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    return _M["m"]


def _library(inp):
    return _matcher()({"logits": inp["x"], "pred_boxes": inp["pb"]}, inp["targets"])


def _fused(inp):
    from ..match import hungarian_match

    m = _matcher()
    return hungarian_match(inp["x"], inp["pb"], inp["targets"], class_cost=m.class_cost,
                           bbox_cost=m.bbox_cost, giou_cost=m.giou_cost, class_kind="focal")


def ops():
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("scipy") is None:
        return {}
    return {"matcher": BenchOp(
        name="matcher", family="assign", unit="targets per image (16 images, 300 queries)",
        make=_inputs, fused=_fused, eager=_library, bytes_moved=_bytes, differentiable=False,
        compilable=False, sizes={"quick": [8], "cpu": [8, 64, 300], "cuda": [8, 64, 300]})}
