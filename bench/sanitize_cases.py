"""Small CUDA workloads for compute-sanitizer (memcheck, racecheck): every kernel, dtype and
reduction, with odd sizes, misaligned storage, broadcast operands and empty inputs; dense,
class-index and class-major targets, ignore_index, score and label smoothing; upstream
gradients of 1 and not 1 and a retained graph's second backward (the recomputing backward
ops); the assigner with and without topk2, its mask-aware overlap and rotated boxes; the mask
loss. Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation
and an out-of-bounds access is caught, not hidden in a pool.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/sanitize_cases.py

    python bench/sanitize_cases.py --emulated   # the same cases under the SIMT emulator (CPU):
                                                # tests/test_emulator.py runs it, so the script
                                                # cannot rot between GPU runs
"""
import contextlib
import os
import sys

import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN

DEVICE = "cuda"


def forward_only(f, *inputs):
    """f on detached inputs: the kernels that compute no gradient (inference)."""
    with torch.no_grad():
        f(*[t.detach() for t in inputs])


def backward(out, inputs, upstream_not_1=False, retain=False):
    """The backward of out (summed when unreduced), with an upstream of 1 or 0.37, and with
    `retain` a second backward of the same graph (the recomputing backward op)."""
    inputs = [t for t in inputs if t.requires_grad]
    if not inputs:
        return
    up = torch.full_like(out, 0.37) if upstream_not_1 else torch.ones_like(out)
    torch.autograd.grad(out, inputs, up, retain_graph=retain)
    if retain:
        torch.autograd.grad(out, inputs, up)


def cls_call(kind, x, t, red, gamma, **kw):
    if kind == "bce":
        return DF.binary_cross_entropy_with_logits(x, t, reduction=red, **kw)
    if kind == "focal":
        return DF.sigmoid_focal_loss(x, t, gamma=gamma, reduction=red, **kw)
    if kind == "qfl":
        return DF.quality_focal_loss(x, t, gamma=gamma, reduction=red, **kw)
    return DF.varifocal_loss(x, t, gamma=gamma, reduction=red, **kw)


def cls_each(x, t, dtype, options, all_reductions=True):
    """Every kind (gamma 2, fp32's kernels of their own, and 1.5), every reduction (or one a
    kind on a large input: the kernels do not depend on it): the forward alone and with its
    gradient, an upstream of 1 or not, a retained second backward."""
    for k, kind in enumerate(("bce", "focal", "qfl", "vfl")):
        for gamma in ((2.0,) if kind == "bce" else (2.0, 1.5)):
            for i, red in enumerate(("none", "mean", "sum")):
                if not all_reductions and i != k % 3:
                    continue
                kw = options(kind, i)
                f = lambda x: cls_call(kind, x, t, red, gamma, **kw)  # noqa: E731
                backward(f(x), [x], upstream_not_1=i == 1, retain=i == 2)
                forward_only(f, x)


def cls_cases(quick):
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for dtype in dtypes:
        # dense targets: odd and empty sizes, misaligned storage, several blocks; weights and
        # pos_weight broadcast, VFL's labels, label smoothing
        for shape, offset in (((1,), 0), ((7, 3), 0), ((7, 3), 1), ((0, 80), 0), ((1000, 80), 1)):
            n = 1
            for d in shape:
                n *= d
            x = torch.randn(n + offset, device=DEVICE, dtype=dtype)[offset:].view(shape).requires_grad_()
            t = torch.rand(shape, device=DEVICE, dtype=dtype)
            w = torch.rand(shape[-1:], device=DEVICE, dtype=dtype)
            options = lambda kind, i: {  # noqa: E731
                "bce": [{"weight": w, "pos_weight": w}, {"label_smoothing": 0.1}, {}],
                "focal": [{}, {"label_smoothing": 0.1}, {"weight": w}],
                "qfl": [{"weight": w}, {}, {"label_smoothing": 0.1}],
                "vfl": [{"label": t > 0.5}, {}, {"weight": w}]}[kind][i]
            cls_each(x, t, dtype, options, all_reductions=n < 10000)
        # class indices: ignored (-100), background (-1, C) and labelled anchors, a score,
        # int32 labels; row-major and class-major ([B, C, A] permuted) logits
        for B, C, A in ((2, 3, 37), (2, 80, 1000)):
            lab = torch.randint(-1, C + 1, (B, A), device=DEVICE)
            lab[:, ::7] = -100
            score = torch.rand(B, A, device=DEVICE, dtype=dtype)
            for x in (torch.randn(B, A, C, device=DEVICE, dtype=dtype),
                      torch.randn(B, C, A, device=DEVICE, dtype=dtype).transpose(1, 2)):
                x.requires_grad_()
                options = lambda kind, i: [{"score": score}, {"label_smoothing": 0.05},  # noqa: E731
                                           {"ignore_index": 0, "score": score}][i]
                cls_each(x, lab, dtype, options, all_reductions=A < 100)
                if A < 100:
                    cls_each(x, lab.int(), dtype, lambda kind, i: {})


def box_cases(quick):
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for dtype in dtypes:
        for n in (1, 7, 1000):
            for offset in (0, 1):
                base = torch.rand(4 * n + offset, device=DEVICE, dtype=dtype) * 10
                p = base[offset:].view(n, 4).requires_grad_()
                t = (torch.rand(n, 4, device=DEVICE, dtype=dtype) * 10).requires_grad_()
                for kind in ("iou", "giou", "diou", "ciou"):
                    for fmt in ("xyxy", "xywh"):
                        for i, red in enumerate(("none", "sum")):
                            o = DF.iou_loss(p, t, kind, fmt, reduction=red)
                            backward(o, [p, t], upstream_not_1=i == 1, retain=i == 0)
                        forward_only(lambda p, t: DF.iou_loss(p, t, kind, fmt), p, t)
                        # broadcast
                        backward(DF.iou_loss(p[:1], t, kind, fmt, reduction="mean"), [p])
                    DF.box_iou_matrix(p.detach(), t.detach()[: max(1, n // 3)], kind)
                    DF.box_iou_matrix(p.detach()[None].repeat(2, 1, 1), t.detach()[None].repeat(2, 1, 1), kind)
            # ProbIoU: rotated rows of 5 (unaligned by construction), any angle
            base = torch.rand(5 * n + offset, device=DEVICE, dtype=dtype) * 10
            p = base[offset:].view(n, 5).requires_grad_()
            t = (torch.rand(n, 5, device=DEVICE, dtype=dtype) * 10).requires_grad_()
            for kind in ("probiou", "probiou_ciou"):
                for i, red in enumerate(("none", "sum")):
                    o = DF.iou_loss(p, t, kind, "xywhr", reduction=red, floor=0.01)
                    backward(o, [p, t], upstream_not_1=i == 1, retain=i == 0)
                forward_only(lambda p, t: DF.iou_loss(p, t, kind, "xywhr"), p, t)
                backward(DF.iou_loss(p[:1], t, kind, "xywhr", reduction="mean"), [p])
                DF.box_iou_matrix(p.detach(), t.detach()[: max(1, n // 3)], kind, "xywhr")
                DF.box_iou_matrix(p.detach()[None].repeat(2, 1, 1), t.detach()[None].repeat(2, 1, 1),
                                  kind, "xywhr")


def dfl_cases(quick):
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    bins_list = (2, 16, 17, 64, 256, 300) if quick else (2, 7, 16, 17, 33, 64, 129, 256, 300, 1024)
    for dtype in dtypes:
        for bins in bins_list:
            # (the last: several blocks of units at every bin count)
            for rows, offset in ((1, 0), (37, 0), (37, 1), (max(100, 65536 // bins), 1)):
                base = torch.randn(rows * bins + offset, device=DEVICE, dtype=dtype)
                z = base[offset:].view(rows, bins).requires_grad_()
                y = torch.rand(rows, device=DEVICE) * bins
                for i, red in enumerate(("none", "mean")):
                    o = DF.distribution_focal_loss(z, y, reduction=red)
                    backward(o, [z], upstream_not_1=i == 1, retain=i == 0)
                forward_only(lambda z: DF.distribution_focal_loss(z, y), z)
                # D-FINE's split targets (left bin, right weight)
                left = torch.randint(0, bins - 1, (rows,), device=DEVICE).float()
                wr = torch.rand(rows, device=DEVICE)
                backward(DF.distribution_focal_loss(z, left, "sum", weight_right=wr), [z], retain=True)
                backward(DF.distribution_integral(z), [z], retain=True)
        # the distillation KL (D-FINE's DDF): a thread a row
        for bins in (2, 33, 1024):
            z = torch.randn(37, bins, device=DEVICE, dtype=dtype, requires_grad=True)
            backward(DF.distribution_kl_loss(z, torch.randn_like(z).detach(), 5.0), [z])
        # ultralytics' bin-major box output
        z = torch.randn(2, 64, 50, device=DEVICE, dtype=dtype).permute(0, 2, 1).view(2, 50, 4, 16)
        z.requires_grad_()
        backward(DF.distribution_integral(z), [z])


def mask_cases(quick):
    """The prototype mask loss: boxes inside, across and outside the grid, a zero area (the
    NaN path), an image without positives, nm = 32 and 40 (two ProtoGradUnit passes), both
    ground-truth forms, every dtype and reduction, upstreams of 1 and not 1, a retained
    second backward."""
    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    B, H, W, P = 3, 19, 23, 9
    boxes = torch.tensor([[0.0, 0, 23, 19], [2, 3, 9.5, 7], [-4, -4, 40, 40], [20, 15, 30, 30],
                          [5, 5, 5, 12], [1.5, 0.5, 22.5, 18.5], [30, 0, 35, 5], [3, 3, 4, 4],
                          [0, 10, 12, 19]])
    area = torch.rand(P, generator=g) * 0.5 + 0.05
    area[4] = 0.0
    bi = torch.tensor([0, 0, 2, 2, 0, 2, 0, 2, 0])  # image 1 has none
    for nm in (32, 40):
        coef = torch.randn(P, nm, generator=g)
        proto = torch.randn(B, nm, H, W, generator=g)
        for overlap in (True, False):
            masks = torch.randint(0, 3, (B, H, W), generator=g) if overlap else \
                (torch.rand(5, H, W, generator=g) < 0.5).float()
            mi = torch.randint(0, 2 if overlap else 5, (P,), generator=g)
            rest = [t.to(DEVICE) for t in (bi, boxes, area, masks, mi)]
            for dtype in dtypes:
                c = coef.to(DEVICE, dtype).requires_grad_()
                p = proto.to(DEVICE, dtype).requires_grad_()
                for i, red in enumerate(("none", "mean", "sum")):
                    o = DF.prototype_mask_loss(c, p, *rest, overlap=overlap, reduction=red)
                    backward(o, [c, p], upstream_not_1=i == 1, retain=i == 2)
                forward_only(lambda c, p: DF.prototype_mask_loss(c, p, *rest, overlap=overlap), c, p)


def assign_cases(quick):
    """Images of boxes over 3 levels of anchors (ultralytics' layout), a padded box per image."""
    g = torch.Generator().manual_seed(0)
    size = 160
    anchors = []
    for s in (8, 16, 32):
        k = size // s
        yy, xx = torch.meshgrid(torch.arange(k) + 0.5, torch.arange(k) + 0.5, indexing="ij")
        anchors.append(torch.stack([xx, yy], -1).view(-1, 2) * s)
    anc = torch.cat(anchors)
    A = anc.shape[0]
    for B, M in ((1, 1), (3, 7)):
        xy = torch.rand(B, M, 2, generator=g) * size * 0.8 + size * 0.1
        wh = torch.rand(B, M, 2, generator=g) * size * 0.4 + 4
        gt = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        mask = torch.ones(B, M, 1)
        mask[:, -1] = 0
        gt[:, -1] = 0
        labels = torch.randint(0, 5, (B, M, 1), generator=g).float()
        pc = anc + torch.randn(B, A, 2, generator=g) * 4
        pwh = torch.rand(B, A, 2, generator=g) * size * 0.5 + 4
        pd = torch.cat([pc - pwh / 2, pc + pwh / 2], -1)
        scores = torch.rand(B, A, 5, generator=g)
        for box_dtype in ((torch.float32,) if quick else (torch.float32, torch.float64)):
            for score_dtype in ((torch.float32,) if quick else (
                    torch.float32, torch.float64, torch.float16, torch.bfloat16)):
                args = [t.to(DEVICE) for t in (scores.to(score_dtype), pd.to(box_dtype), anc.to(box_dtype),
                                               labels, gt.to(box_dtype), mask)]
                for kw in (dict(topk=10), dict(topk=7, topk2=1), dict(topk=64, topk2=40)):
                    DN.TaskAlignedAssigner(num_classes=5, alpha=0.5, **kw)(*args)
                logits = torch.logit(args[0].float()).transpose(1, 2).contiguous().transpose(1, 2)
                DN.TaskAlignedAssigner(num_classes=5, topk=10)(logits, *args[1:], scores_are_logits=True)
                # the mask-aware overlap (YOLO26-seg): permuted coefficients, 40 x 40 prototypes
                nm, H = 8, 40
                coef = torch.randn(B, nm, A, generator=g).to(DEVICE, box_dtype).permute(0, 2, 1)
                proto = torch.randn(B, nm, H, H, generator=g).to(DEVICE, box_dtype)
                gm = (torch.rand(B, M, H, H, generator=g) < 0.3).to(DEVICE)
                scale = torch.full((B, 1), H / size, device=DEVICE, dtype=box_dtype)
                for kw in (dict(topk=10), dict(topk=7, topk2=1), dict(topk=21)):
                    DN.SegTaskAlignedAssigner(num_classes=5, alpha=0.5, **kw)(*args, coef, scale, proto, gm)
                # rotated boxes (YOLO-OBB): xywhr, the same centres and sides, angles in (-pi/2, pi/2)
                def xywhr(t, n):
                    ang = (torch.rand(*t.shape[:2], 1, generator=g) - 0.5) * 3.14
                    return torch.cat([(t[..., :2] + t[..., 2:]) / 2, t[..., 2:] - t[..., :2], ang], -1)
                rot = [args[0], xywhr(pd, A).to(DEVICE, box_dtype), args[2], args[3],
                       xywhr(gt, M).to(DEVICE, box_dtype), args[5]]
                for kw in (dict(topk=10), dict(topk=7, topk2=1)):
                    DN.RotatedTaskAlignedAssigner(num_classes=5, alpha=0.5, **kw)(*rot)
                # keypoints (YOLO26-pose): 17 a box, some hidden; the head's [B, 51, A] read in place
                K = 17
                strides = torch.cat([torch.full(((size // s) ** 2,), float(s)) for s in (8, 16, 32)])
                kp = gt[:, :, None, :2] + torch.rand(B, M, K, 2, generator=g) * (gt[:, :, None, 2:] - gt[:, :, None, :2])
                gk = torch.cat([kp, torch.randint(0, 3, (B, M, K, 1), generator=g).float()], -1)
                head = (anc.repeat(1, K)[None] + torch.randn(B, A, 2 * K, generator=g) * 8).view(B, A, K, 2)
                head = torch.cat([head, torch.zeros(B, A, K, 1)], -1).view(B, A, 3 * K).transpose(1, 2).contiguous()
                pk = head.to(DEVICE).transpose(1, 2).view(B, A, K, 3)[..., :2]
                sig = torch.full((K,), 0.08, device=DEVICE)
                # the DETR matchers' cost: 30 queries, the image's boxes as targets (one image without)
                from detloss_cuda.match import detr_match_cost
                sizes = [M] * B if B == 1 else [M] + [0] + [M] * (B - 2)
                T = sum(sizes)
                tb = torch.rand(T, 4, generator=g) * 0.5 + 0.1
                lab = torch.randint(0, 5, (T,), generator=g)
                ql = torch.randn(B, 30, 5, generator=g)
                qb = torch.rand(B, 30, 4, generator=g) * 0.5 + 0.1
                given = torch.randn(B, 30, M, generator=g)  # a class-cost block (Grounding DINO)
                for kind, conv in (("softmax", "transformers"), ("focal", "transformers"),
                                   ("given", "transformers"), ("focal", "ultralytics")):
                    for dt in (box_dtype,) if box_dtype == torch.float64 else (
                            box_dtype, torch.float16, torch.bfloat16):
                        detr_match_cost((given if kind == "given" else ql).to(DEVICE, dt),
                                        qb.to(DEVICE, dt), lab.to(DEVICE), tb.to(DEVICE, dt), sizes,
                                        class_kind=kind, convention=conv)
                for kw in (dict(topk=10), dict(topk=7, topk2=1)):
                    DN.PoseTaskAlignedAssigner(sig, num_classes=5, alpha=0.5, **kw)(
                        *args, strides.to(DEVICE), pd_kpts=pk, gt_kpts=gk.to(DEVICE, box_dtype))


def main():
    global DEVICE
    quick = "--quick" in sys.argv
    ctx = contextlib.nullcontext()
    if "--emulated" in sys.argv:
        DEVICE = "cpu"
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from emulated_cuda import emulated

        ctx = emulated()
    with ctx:
        cls_cases(quick)
        box_cases(quick)
        dfl_cases(quick)
        mask_cases(quick)
        assign_cases(quick)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    print("sanitize_cases: all cases ran")


if __name__ == "__main__":
    main()
