"""One forward + backward of every op at a bandwidth-bound size, fp32, for Nsight Compute.

bench/gpu_check.sh profiles it with
    ncu --clock-control none --section SpeedOfLight --section Occupancy
        --section WarpStateStats -k regex:map_reduce_kernel|box_matrix_kernel python bench/ncu_cases.py
and each kernel's row names its unit (ClsUnit<float, kind, forward?>, BoxUnit<...>,
DflForward<...>); the op order printed below maps kinds to ops. A warm-up pass runs first
(outside the profiled range) so that lazy initialisation is not measured.
"""
import sys

import torch

import detloss_cuda.functional as DF

N = 1 << 25  # 32 Mi elements: 128 MiB per fp32 tensor, far beyond the 50 MB L2


def cases():
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", generator=g) * scale

    x = r(N // 80, 80).requires_grad_()
    t = torch.rand(N // 80, 80, device="cuda", generator=g)
    yield "bce", lambda: DF.binary_cross_entropy_with_logits(x, t, reduction="sum"), x
    yield "focal", lambda: DF.sigmoid_focal_loss(x, t, reduction="sum"), x
    yield "qfl", lambda: DF.quality_focal_loss(x, t, reduction="sum"), x
    yield "vfl", lambda: DF.varifocal_loss(x, t, label=t > 0.5, reduction="sum"), x
    nb = N // 4
    xy = torch.rand(nb, 2, device="cuda", generator=g) * 100
    wh = torch.rand(nb, 2, device="cuda", generator=g) * 50 + 1
    p = torch.cat([xy, xy + wh], 1).requires_grad_()
    tb = torch.cat([xy + 2, xy + wh * 1.1], 1)
    for kind in ("iou", "giou", "diou", "ciou"):
        yield kind, (lambda k=kind: DF.iou_loss(p, tb, k, reduction="sum")), p
    a = torch.cat([xy[: N // 64], xy[: N // 64] + wh[: N // 64]], 1)
    yield "iou_matrix", lambda: DF.box_iou_matrix(a[: (1 << 20)], tb[:64]), None
    nr = N // 5  # rotated boxes: rows of 5
    ro = torch.cat([torch.rand(nr, 2, device="cuda", generator=g) * 1000,
                    torch.rand(nr, 2, device="cuda", generator=g) * 64 + 8,
                    torch.rand(nr, 1, device="cuda", generator=g) * 3], 1)
    pr = (ro + 0.5).requires_grad_()
    yield "probiou", lambda: DF.probiou_loss(pr, ro, floor=0.01, reduction="sum"), pr
    yield "probiou_matrix", lambda: DF.batch_probiou(ro[: (1 << 20)], ro[:64]), None
    z = r(N // 16, 16, scale=2.0).requires_grad_()
    y = torch.rand(N // 16, device="cuda", generator=g) * 15
    yield "dfl", lambda: DF.distribution_focal_loss(z, y, reduction="sum"), z
    yield "integral", lambda: DF.distribution_integral(z).sum(), z


def main():
    todo = list(cases())
    for _, f, x in todo:  # warm-up
        out = f()
        if x is not None:
            torch.autograd.grad(out, x)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for name, f, x in todo:
        print("op", name, flush=True)
        out = f()
        if x is not None:
            torch.autograd.grad(out, x)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
