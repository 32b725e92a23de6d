"""Small CUDA workloads for compute-sanitizer (memcheck, racecheck): every op,
dtype and reduction, with odd sizes, misaligned storage, broadcast operands and empty
inputs, forward and backward. Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every
tensor is its own allocation and an out-of-bounds access is caught, not hidden in a pool.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/sanitize_cases.py
"""
import sys

import torch

import detloss_cuda.functional as DF


def cls_cases(quick):
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    sizes = [(1,), (7, 3), (0, 80), (1000, 80)] if not quick else [(7, 3), (1000, 80)]
    for dtype in dtypes:
        for shape in sizes:
            for offset in (0, 1):
                n = 1
                for s in shape:
                    n *= s
                base = torch.randn(n + offset, device="cuda", dtype=dtype)
                x = base[offset:].view(shape).requires_grad_()
                t = torch.rand(shape, device="cuda", dtype=dtype)
                w = torch.rand(shape[-1:], device="cuda", dtype=dtype) if shape else None
                for red in ("none", "mean", "sum"):
                    outs = [
                        DF.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w, reduction=red),
                        DF.sigmoid_focal_loss(x, t, reduction=red),
                        DF.quality_focal_loss(x, t, reduction=red, weight=w),
                        DF.varifocal_loss(x, t, label=t > 0.5, reduction=red),
                    ]
                    for o in outs:
                        (o.sum() if red == "none" else o).backward()
    torch.cuda.synchronize()


def box_cases(quick):
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    for dtype in dtypes:
        for n in (1, 7, 1000):
            for offset in (0, 1):
                base = torch.rand(4 * n + offset, device="cuda", dtype=dtype) * 10
                p = base[offset:].view(n, 4).requires_grad_()
                t = (torch.rand(n, 4, device="cuda", dtype=dtype) * 10).requires_grad_()
                for kind in ("iou", "giou", "diou", "ciou"):
                    for fmt in ("xyxy", "xywh"):
                        for red in ("none", "sum"):
                            o = DF.iou_loss(p, t, kind, fmt, reduction=red)
                            (o.sum() if red == "none" else o).backward()
                        DF.iou_loss(p[:1], t, kind, fmt, reduction="mean").backward()  # broadcast
                    DF.box_iou_matrix(p.detach(), t.detach()[: max(1, n // 3)], kind)
                    DF.box_iou_matrix(p.detach()[None].repeat(2, 1, 1), t.detach()[None].repeat(2, 1, 1), kind)
    torch.cuda.synchronize()


def dfl_cases(quick):
    dtypes = [torch.float32, torch.float16] if quick else [
        torch.float32, torch.float64, torch.float16, torch.bfloat16]
    bins_list = (2, 16, 17, 64, 256) if quick else (2, 7, 16, 17, 33, 64, 129, 256, 1024)
    for dtype in dtypes:
        for bins in bins_list:
            for rows in (1, 37, 1000):
                for offset in (0, 1):
                    base = torch.randn(rows * bins + offset, device="cuda", dtype=dtype)
                    z = base[offset:].view(rows, bins).requires_grad_()
                    y = torch.rand(rows, device="cuda") * bins
                    for red in ("none", "mean"):
                        o = DF.distribution_focal_loss(z, y, reduction=red)
                        (o.sum() if red == "none" else o).backward()
                    DF.distribution_integral(z).sum().backward()
    torch.cuda.synchronize()


def main():
    quick = "--quick" in sys.argv
    cls_cases(quick)
    box_cases(quick)
    dfl_cases(quick)
    print("sanitize_cases: all cases ran")


if __name__ == "__main__":
    main()
