"""Small CUDA workloads for compute-sanitizer (memcheck, racecheck, synccheck): every op,
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


def main():
    quick = "--quick" in sys.argv
    cls_cases(quick)
    print("sanitize_cases: all cases ran")


if __name__ == "__main__":
    main()
