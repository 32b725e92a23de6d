"""Run by tests/test_bad_input.py in a child process: every public function and op, called
with one argument replaced by something wrong. One JSON line per case; the case's name is
printed (and flushed) before it runs, so a signal or an abort names its case."""
import json
import math
import sys

import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
from detloss_cuda.assign import task_aligned_assign
from detloss_cuda.match import detr_match_cost

ops = torch.ops.detloss


def T(*shape, dtype=torch.float32):
    return torch.rand(*shape, dtype=dtype)


def boxes(*lead):
    xy = torch.rand(*lead, 2) * 10
    return torch.cat([xy, xy + 1 + torch.rand(*lead, 2)], -1)


def obbs(*lead):
    return torch.cat([torch.rand(*lead, 2) * 10, 1 + torch.rand(*lead, 2), torch.rand(*lead, 1)], -1)


# function -> (positional names, valid keyword arguments, names of the tensor arguments that
# may be None, names of number arguments)
CLS_OPT = {"weight", "pos_weight", "score", "label"}


def cls_valid():
    return dict(input=torch.randn(6, 5, requires_grad=True), target=T(6, 5), weight=T(6, 5),
                reduction="mean")


SPECS = {
    "binary_cross_entropy_with_logits": (DF.binary_cross_entropy_with_logits,
        lambda: {**cls_valid(), "pos_weight": T(5)}, CLS_OPT, {}),
    "sigmoid_focal_loss": (DF.sigmoid_focal_loss,
        lambda: {**cls_valid(), "alpha": 0.25, "gamma": 2.0}, CLS_OPT | {"alpha"}, {"gamma"}),
    "sigmoid_focal_loss[index]": (DF.sigmoid_focal_loss,
        lambda: {"input": torch.randn(6, 5), "target": torch.randint(0, 5, (6,)),
                 "score": T(6), "reduction": "sum", "ignore_index": -100,
                 "label_smoothing": 0.1}, CLS_OPT, {"label_smoothing"}),
    "quality_focal_loss": (DF.quality_focal_loss, lambda: {**cls_valid(), "gamma": 2.0},
                           CLS_OPT | {"alpha"}, {"gamma"}),
    "varifocal_loss": (DF.varifocal_loss,
        lambda: {**cls_valid(), "label": T(6, 5) > 0.5, "alpha": 0.75, "gamma": 2.0},
        CLS_OPT, {"gamma", "alpha"}),
    "iou_loss": (DF.iou_loss, lambda: {"pred": boxes(6).requires_grad_(), "target": boxes(6),
                                       "kind": "ciou", "box_format": "xyxy", "eps": 1e-7,
                                       "reduction": "mean", "weight": T(6)}, {"weight"}, {"eps"}),
    "generalized_box_iou_loss": (DF.generalized_box_iou_loss,
        lambda: {"boxes1": boxes(6), "boxes2": boxes(6), "reduction": "none"}, set(), {"eps"}),
    "distance_box_iou_loss": (DF.distance_box_iou_loss,
        lambda: {"boxes1": boxes(6), "boxes2": boxes(1, 6), "reduction": "sum"}, set(), {"eps"}),
    "complete_box_iou_loss": (DF.complete_box_iou_loss,
        lambda: {"boxes1": boxes(6), "boxes2": boxes(6), "reduction": "mean"}, set(), {"eps"}),
    "bbox_iou": (DF.bbox_iou, lambda: {"box1": boxes(6, 1), "box2": boxes(1, 4)}, set(), {"eps"}),
    "box_iou_matrix": (DF.box_iou_matrix,
        lambda: {"boxes1": boxes(6), "boxes2": boxes(3), "kind": "giou"}, set(), {"eps"}),
    "probiou": (DF.probiou, lambda: {"obb1": obbs(6).requires_grad_(), "obb2": obbs(6),
                                     "CIoU": True, "floor": 0.01}, set(), {"eps", "floor"}),
    "probiou_loss": (DF.probiou_loss,
        lambda: {"pred": obbs(6).requires_grad_(), "target": obbs(1, 6), "floor": 0.01,
                 "reduction": "sum", "weight": T(6)}, {"weight"}, {"eps", "floor"}),
    "batch_probiou": (DF.batch_probiou, lambda: {"obb1": obbs(6), "obb2": obbs(4)}, set(),
                      {"eps"}),
    "distribution_focal_loss": (DF.distribution_focal_loss,
        lambda: {"pred": torch.randn(6, 16, requires_grad=True), "target": T(6) * 15,
                 "reduction": "mean", "weight": T(6)}, {"weight"}, set()),
    "distribution_focal_loss[split]": (DF.distribution_focal_loss,
        lambda: {"pred": torch.randn(6, 16, requires_grad=True),
                 "target": torch.randint(0, 15, (6,)).float(), "reduction": "sum", "weight": T(6),
                 "weight_right": T(6)}, {"weight", "weight_right"}, set()),
    "distribution_kl_loss": (DF.distribution_kl_loss,
        lambda: {"pred": torch.randn(6, 16, requires_grad=True), "teacher": torch.randn(6, 16),
                 "temperature": 5.0}, set(), {"temperature"}),
    "distribution_integral": (DF.distribution_integral,
        lambda: {"pred": torch.randn(6, 16, requires_grad=True)}, set(), set()),
    "prototype_mask_loss": (DF.prototype_mask_loss,
        lambda: {"coef": torch.randn(6, 4, requires_grad=True),
                 "proto": torch.randn(2, 4, 5, 5, requires_grad=True),
                 "batch_index": torch.tensor([0, 1, 1, 0, 1, 0]), "boxes": boxes(6) / 2,
                 "area": T(6) + 0.1, "masks": torch.randint(0, 3, (2, 5, 5)).float(),
                 "mask_index": torch.randint(0, 2, (6,)), "reduction": "mean"}, set(), set()),
    "detr_match_cost": (detr_match_cost,
        lambda: {"logits": torch.randn(2, 6, 4), "pred_boxes": T(2, 6, 4) * 0.5 + 0.1,
                 "target_labels": torch.randint(0, 4, (3,)), "target_boxes": T(3, 4) * 0.5 + 0.1,
                 "sizes": [1, 2], "class_kind": "focal"}, set(),
        {"class_cost", "bbox_cost", "giou_cost", "alpha", "gamma"}),
    "task_aligned_assign": (task_aligned_assign,
        lambda: {"pd_scores": T(2, 30, 4), "pd_bboxes": boxes(2, 30),
                 "anc_points": torch.rand(30, 2) * 10, "gt_labels": torch.randint(0, 4, (2, 3, 1)),
                 "gt_bboxes": boxes(2, 3), "mask_gt": torch.ones(2, 3, 1), "topk": 5,
                 "num_classes": 4}, set(), {"alpha", "beta", "eps", "stride_val"}),
}


# arguments whose last dim is free (a number of classes or bins), and functions of one tensor
FREE_LAST = {"sigmoid_focal_loss[index]": {"input"}, "distribution_focal_loss": {"pred"},
             "distribution_focal_loss[split]": {"pred"},
             "distribution_integral": {"pred"}, "task_aligned_assign": {"pd_scores"},
             "detr_match_cost": {"logits"}}
ONE_TENSOR = {"distribution_integral"}


def tensor_mutations(fname, arg, v):
    """(label, wrong value, must it raise) for a tensor argument."""
    yield "a string", "boxes", True
    yield "a list", v.tolist(), True
    yield "complex", torch.zeros(v.shape, dtype=torch.complex64), True
    yield "on meta", torch.zeros(v.shape, device="meta"), fname not in ONE_TENSOR
    if v.dim() > 0:
        yield ("last dim + 1", torch.rand(*v.shape[:-1], v.shape[-1] + 1),
               arg not in FREE_LAST.get(fname, ()))
        yield "0-dim", torch.tensor(0.5), False  # broadcasts where broadcasting is allowed
        yield "huge expanded", torch.zeros(1).expand(2**40), True
        yield "extra dim", v.unsqueeze(0).expand(3, *v.shape).contiguous(), False
    yield "int8", torch.zeros(v.shape, dtype=torch.int8), False
    yield "bool", torch.zeros(v.shape, dtype=torch.bool), False
    yield "empty", torch.zeros(0), False


def number_mutations():
    yield "a string", "2", True
    yield "nan", math.nan, True
    yield "-inf", -math.inf, True
    yield "negative", -3.0, False
    yield "huge", 1e300, True  # inf in the float32 arithmetic of these float32 inputs


def cases():
    for fname, (fn, valid, optional, numbers) in SPECS.items():
        base = valid()
        for arg, v in base.items():
            if isinstance(v, torch.Tensor):
                yield (fname, arg, "None", fn, {**valid(), arg: None}, arg not in optional)
                for label, wrong, must in tensor_mutations(fname, arg, v.detach()):
                    yield (fname, arg, label, fn, {**valid(), arg: wrong}, must)
            elif isinstance(v, str):
                yield (fname, arg, "unknown string", fn, {**valid(), arg: "nope"}, True)
                yield (fname, arg, "None", fn, {**valid(), arg: None}, True)
        for arg in numbers:
            for label, wrong, must in number_mutations():
                yield (fname, arg, label, fn, {**valid(), arg: wrong}, must)
        for arg in ("topk", "num_classes", "ignore_index"):
            if arg in base:
                for label, wrong, must in (("None", None, True), ("a float", 2.5, True),
                                          ("negative", -2, arg != "ignore_index"),
                                          ("huge", 2**62, arg != "ignore_index")):
                    yield (fname, arg, label, fn, {**valid(), arg: wrong}, must)
    # the modules' forward, and the ops themselves (what torch.compile and TorchScript call)
    yield ("nn.FocalLoss", "input", "None", DN.FocalLoss(), {"input": None, "target": T(2)}, True)
    yield ("nn.DistributionFocalLoss", "pred", "a list", DN.DistributionFocalLoss(),
           {"pred": [1.0], "target": T(2)}, True)
    x, t = torch.randn(6, 5), T(6, 5)
    yield ("ops.cls_loss", "kind", "unknown string", lambda **k: ops.cls_loss(
        x, t, None, None, None, k["kind"], -1.0, 0.0, "sum"), {"kind": "hinge"}, True)
    yield ("ops.cls_loss", "reduction", "unknown string", lambda **k: ops.cls_loss(
        x, t, None, None, None, "bce", -1.0, 0.0, k["reduction"]), {"reduction": "avg"}, True)
    yield ("ops.cls_loss", "input", "None", lambda **k: ops.cls_loss(
        k["input"], t, None, None, None, "bce", -1.0, 0.0, "sum"), {"input": None}, True)
    yield ("ops.cls_backward", "grad", "wrong shape", lambda **k: ops.cls_backward(
        k["grad"], x, t, None, None, None, "bce", -1.0, 0.0, "none"),
        {"grad": torch.ones(7, 5)}, True)
    yield ("ops.cls_loss", "gamma", "negative", lambda **k: ops.cls_loss(
        x, t, None, None, None, "focal", 0.25, k["gamma"], "sum"), {"gamma": -1.0}, True)
    b = boxes(6)
    yield ("ops.box_loss", "eps", "negative", lambda **k: ops.box_loss(
        b, b, None, "giou", "xyxy", k["eps"], "sum"), {"eps": -1.0}, True)
    yield ("ops.box_backward", "grad", "wrong shape", lambda **k: ops.box_backward(
        k["grad"], b, b, None, "giou", "xyxy", 1e-7, "none", [True, True]),
        {"grad": torch.ones(5)}, True)
    z = torch.randn(6, 16)
    yield ("ops.dfl_backward", "stats", "wrong shape", lambda **k: ops.dfl_backward(
        torch.ones(()), z, T(6), k["stats"], None, "sum"), {"stats": torch.ones(6)}, True)
    yield ("ops.dfl_integral_backward", "stats", "wrong dtype", lambda **k: ops.dfl_integral_backward(
        torch.ones(6), z, k["stats"]), {"stats": torch.ones(6, 2, dtype=torch.float64)}, True)
    yield ("ops.tal_assign", "topk", "zero", lambda **k: ops.tal_assign(
        T(2, 30, 4), boxes(2, 30), torch.rand(30, 2), torch.randint(0, 4, (2, 3, 1)), boxes(2, 3),
        torch.ones(2, 3, 1), k["topk"], 5, 1.0, 6.0, 16.0, 1e-9, False), {"topk": 0}, True)
    yield ("ops.tal_assign_rotated", "gt_bboxes", "xyxy", lambda **k: ops.tal_assign_rotated(
        T(2, 30, 4), torch.rand(2, 30, 5), torch.rand(30, 2), torch.randint(0, 4, (2, 3, 1)),
        k["gt_bboxes"], torch.ones(2, 3, 1), 10, 10, 1.0, 6.0, 16.0, 1e-9, False),
        {"gt_bboxes": boxes(2, 3)}, True)
    yield ("ops.tal_assign_seg", "gt_masks", "too few rows", lambda **k: ops.tal_assign_seg(
        T(2, 30, 4), boxes(2, 30), torch.rand(30, 2), torch.randint(0, 4, (2, 3, 1)), boxes(2, 3),
        torch.ones(2, 3, 1), torch.randn(2, 30, 4), torch.ones(2, 1), torch.randn(2, 4, 8, 8),
        k["gt_masks"], 10, 10, 1.0, 6.0, 16.0, 1e-9, False),
        {"gt_masks": torch.ones(2, 2, 8, 8, dtype=torch.bool)}, True)
    yield ("ops.detr_match_cost", "sizes", "wrong total", lambda **k: ops.detr_match_cost(
        torch.randn(2, 6, 4), torch.rand(2, 6, 4), torch.randint(0, 4, (3,)), torch.rand(3, 4),
        k["sizes"], "focal", 1.0, 5.0, 2.0, 0.25, 2.0), {"sizes": [1, 1]}, True)
    yield ("ops.tal_assign_pose", "pd_kpts", "no keypoint axis", lambda **k: ops.tal_assign_pose(
        T(2, 30, 4), boxes(2, 30), torch.rand(30, 2), torch.randint(0, 4, (2, 3, 1)), boxes(2, 3),
        torch.ones(2, 3, 1), torch.full((30,), 8.0), k["pd_kpts"], torch.rand(2, 3, 17, 3),
        torch.full((17,), 0.05), 10, 10, 1.0, 6.0, 16.0, 1e-9, False, 2.0, 12.0),
        {"pd_kpts": torch.rand(2, 30, 34)}, True)


def describe(out, kwargs):
    """What a call returned: each output's type, and for tensors their shape, dtype and whether
    every value is finite (integer and bool outputs count as finite), and whether the gradient
    of the inputs that require it is finite (it is computed in the forward: garbage there
    would not show in the outputs)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    d = {"types": [type(o).__name__ for o in outs]}
    tensors = [o for o in outs if isinstance(o, torch.Tensor)]
    d["shapes"] = [list(o.shape) for o in tensors]
    d["dtypes"] = [str(o.dtype) for o in tensors]
    real = [o for o in tensors if o.device.type != "meta"]  # (meta in, meta out: no values)
    d["finite"] = all(bool(torch.isfinite(o).all()) if o.is_floating_point() else True
                      for o in real)
    leaves = [v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    diff = [o for o in real if o.requires_grad]
    if leaves and diff:
        grads = torch.autograd.grad(sum(o.sum() for o in diff), leaves, allow_unused=True)
        d["grad_finite"] = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    return d


def main():
    only = sys.argv[1] if len(sys.argv) > 1 else None
    valid_seen = set()
    for i, (fname, arg, label, fn, kwargs, must) in enumerate(cases()):
        name = f"{fname}:{arg}={label}"
        if only is not None and name != only:
            continue
        if fname in SPECS and fname not in valid_seen:  # what the valid call returns
            valid_seen.add(fname)
            kw = SPECS[fname][1]()
            print(json.dumps({"valid": fname, **describe(SPECS[fname][0](**kw), kw)}), flush=True)
        print(json.dumps({"start": name}), flush=True)
        rec = {"case": name, "function": fname, "arg": arg, "label": label, "must_raise": must}
        try:
            out = fn(**kwargs)
            rec["result"] = "ok"
            rec.update(describe(out, kwargs))
        except Exception as e:  # noqa: BLE001 - classified by the parent
            rec["result"] = "raised"
            rec["type"] = type(e).__name__
            rec["msg"] = str(e).split("\nException raised from")[0][:600]
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
