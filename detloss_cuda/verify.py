"""`python -m detloss_cuda verify`: proves this build correct on this machine.

For every op on every available device: values and gradients against the pure-PyTorch
reference (computed in float64 on the CPU from the same dtype-rounded inputs) over a few
shapes and dtypes, and a float64 gradcheck of each fused op on the CPU. Prints a PASS/FAIL
table; the exit code is non-zero on any failure. The tolerances are the test suite's.
"""
import time

import torch

from . import functional as DF
from . import reference as R

# (rtol, atol relative to the largest |expected|, absolute floor) of a result in `dtype`
# against the float64 reference: the output rounding (half an ulp of the dtype: 2^-11 fp16,
# 2^-8 bf16) plus a few opmath ulps from a ~10-operation formula, about twice the sum; the
# relative atol covers absolute cancellation, the floor fp16 subnormals (spaced 2^-24).
TOL = {
    torch.float64: (1e-9, 1e-12, 0.0),
    torch.float32: (2e-5, 2e-6, 0.0),
    torch.float16: (1e-3, 1e-4, 6e-8),
    torch.bfloat16: (8e-3, 1e-3, 0.0),
}
# The arithmetic share of TOL, scaled by `ops` for formulas longer than ~10 operations.
ARITH = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6),
         torch.float16: (2e-5, 2e-6), torch.bfloat16: (2e-5, 2e-6)}


def tolerance(expected, dtype, ops=1):
    """(rtol, atol) for comparing a result in `dtype` with the float64 `expected`."""
    rtol, atol_rel, floor = TOL[dtype]
    rtol += (ops - 1) * ARITH[dtype][0]
    atol_rel += (ops - 1) * ARITH[dtype][1]
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    return rtol, atol_rel * scale + floor


def assert_close_dtype(actual, expected, dtype, msg="", ops=1):
    """actual: a result computed in `dtype`; expected: the float64 reference, rounded here to
    `dtype` (an fp16 sum past 65504 is inf)."""
    expected = expected.detach().cpu().to(dtype).double()
    actual = actual.detach().double().cpu()
    rtol, atol = tolerance(expected, dtype, ops)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol,
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)


def _boxes(n, gen):
    xy = torch.rand(n, 2, dtype=torch.float64, generator=gen) * 10
    wh = torch.rand(n, 2, dtype=torch.float64, generator=gen) * 5 + 0.1
    t = torch.cat([xy, xy + wh], -1)
    return t + torch.randn(n, 4, dtype=torch.float64, generator=gen) * 0.3, t


def _cases():
    """(name, ops, make(n, gen) -> (x, t), fused(x, t), reference(x, t)); x is differentiated."""
    def cls_inputs(n, gen):
        x = torch.randn(n, 80, dtype=torch.float64, generator=gen) * 3
        u = torch.rand(n, 80, dtype=torch.float64, generator=gen)
        t = torch.where(u < 0.2, torch.rand(n, 80, dtype=torch.float64, generator=gen), 0 * u)
        return x, t

    def index_inputs(n, gen):
        """class indices over 80 classes: labelled, background (-1, 80) and ignored (-100)"""
        x = torch.randn(n, 80, dtype=torch.float64, generator=gen) * 3
        lab = torch.randint(-1, 81, (n,), generator=gen)
        lab[torch.rand(n, generator=gen) < 0.1] = -100
        return x, lab

    def dfl_inputs(n, gen):
        return (torch.randn(n, 16, dtype=torch.float64, generator=gen) * 3,
                torch.rand(n, dtype=torch.float64, generator=gen) * 16)

    cases = []
    for name, fn in (("bce", "binary_cross_entropy_with_logits"), ("focal", "sigmoid_focal_loss"),
                     ("qfl", "quality_focal_loss"), ("vfl", "varifocal_loss")):
        cases.append((name, 1, cls_inputs,
                      lambda x, t, fn=fn: getattr(DF, fn)(x, t, reduction="none"),
                      lambda x, t, fn=fn: getattr(R, fn)(x, t, reduction="none")))
    # class-index targets with a per-anchor score, ignored anchors and label smoothing, and
    # the class-major logits of a detection head ([C, A] in memory, read in place)
    # (multiples of 1/8: the same value in every dtype, as the kernels read it in the input's)
    score = torch.randint(0, 9, (1000,), generator=torch.Generator().manual_seed(5)).double() / 8
    for name, fn in (("bce", "binary_cross_entropy_with_logits"), ("focal", "sigmoid_focal_loss"),
                     ("qfl", "quality_focal_loss"), ("vfl", "varifocal_loss")):
        cases.append((f"{name}-idx", 1, index_inputs,
                      lambda x, t, fn=fn: getattr(DF, fn)(x, t, score=score[:len(t)].to(x.device),
                                                          label_smoothing=0.05, reduction="none"),
                      lambda x, t, fn=fn: getattr(R, fn)(x, t, score=score[:len(t)],
                                                         label_smoothing=0.05, reduction="none")))
    cases.append(("focal-cm", 1, index_inputs,
                  lambda x, t: DF.sigmoid_focal_loss(x.t().contiguous().t(), t, reduction="none"),
                  lambda x, t: R.sigmoid_focal_loss(x, t, reduction="none")))
    cases.append(("bce-smooth", 1, cls_inputs,
                  lambda x, t: DF.binary_cross_entropy_with_logits(x, t, label_smoothing=0.1,
                                                                   reduction="none"),
                  lambda x, t: R.binary_cross_entropy_with_logits(x, t, label_smoothing=0.1,
                                                                  reduction="none")))
    for kind in ("iou", "giou", "diou", "ciou"):
        for fmt in ("xyxy", "xywh"):
            cases.append((f"{kind}-{fmt}", 5, _boxes,
                          lambda x, t, k=kind, f=fmt: DF.iou_loss(x, t, k, f, reduction="none"),
                          lambda x, t, k=kind, f=fmt: R.iou_loss(x, t, k, f, reduction="none")))
    cases.append(("dfl", 2, dfl_inputs,
                  lambda x, t: DF.distribution_focal_loss(x, t, reduction="none"),
                  lambda x, t: R.distribution_focal_loss(x, t, reduction="none")))
    cases.append(("integral", 2, dfl_inputs,
                  lambda x, t: DF.distribution_integral(x),
                  lambda x, t: R.distribution_integral(x)))
    return cases


def _check(case, device, dtype, n, reduction_sum):
    name, ops, make, fused, ref = case
    gen = torch.Generator().manual_seed(n)
    x64, t64 = make(n, gen)
    x = x64.to(dtype).to(device).requires_grad_()
    index = not t64.is_floating_point()  # class indices, or DFL's float32/64 distances
    t = t64.to(device) if name in ("dfl", "integral") or index else t64.to(dtype).to(device)
    xr = x.detach().double().cpu().requires_grad_()
    tr = t.cpu() if index else t.double().cpu()
    out, expected = fused(x, t), ref(xr, tr)
    g = torch.randn(expected.shape, dtype=torch.float64, generator=gen).to(dtype)
    if reduction_sum:  # the reduced path: sum of the unreduced one, reduced by the op
        out, expected = out.sum(), expected.sum()
        g = torch.ones((), dtype=dtype)
    (gx,) = torch.autograd.grad(out, x, g.to(device))
    (gr,) = torch.autograd.grad(expected, xr, g.double())
    errs, ok = [], True
    for a, b in ((out, expected), (gx, gr)):
        b16 = b.detach().to(dtype).double()
        a = a.detach().double().cpu()
        rtol, atol = tolerance(b16, dtype, ops)
        diff = (a - b16).abs()
        bound = atol + rtol * b16.abs()
        same_inf = a.isinf() & b16.isinf() & (a.sign() == b16.sign())
        bad = ~(diff <= bound) & ~same_inf
        ratio = torch.where(same_inf, 0.0, diff / bound.clamp_min(1e-300))
        errs.append(ratio.max().item() if diff.numel() else 0.0)
        ok &= not bool(bad.any())
    return ok, errs


def _assign_scene(box_dtype, score_dtype, gen):
    """3 images of 8400 anchors (ultralytics' 640-pixel layout) with 7 boxes each, one padded:
    predictions near the boxes and scattered ones, class probabilities."""
    pts = []
    for s in (8, 16, 32):
        k = 640 // s
        yy, xx = torch.meshgrid(torch.arange(k) + 0.5, torch.arange(k) + 0.5, indexing="ij")
        pts.append(torch.stack([xx, yy], -1).view(-1, 2) * s)
    anc = torch.cat(pts).double()
    B, M, A = 3, 7, anc.shape[0]
    xy = torch.rand(B, M, 2, dtype=torch.float64, generator=gen) * 500 + 70
    wh = torch.rand(B, M, 2, dtype=torch.float64, generator=gen) * 200 + 8
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    mask = torch.ones(B, M, 1, dtype=torch.float64)
    mask[:, -1] = 0
    gt[:, -1] = 0
    labels = torch.randint(0, 20, (B, M, 1), generator=gen).double()
    c = anc + torch.randn(B, A, 2, dtype=torch.float64, generator=gen) * 8
    pwh = torch.rand(B, A, 2, dtype=torch.float64, generator=gen) * 150 + 4
    pd = torch.cat([c - pwh / 2, c + pwh / 2], -1)
    scores = torch.rand(B, A, 20, dtype=torch.float64, generator=gen) * 0.98 + 0.01
    return (scores.to(score_dtype), pd.to(box_dtype), anc.to(box_dtype), labels,
            gt.to(box_dtype), mask)


def _check_assigner(device, box_dtype, score_dtype):
    """The fused assigner against reference.task_aligned_assign (dense, ultralytics' order):
    labels, boxes, foreground and box indices equal, target scores within a few ulps of the
    arithmetic (atan and pow of the device's library)."""
    from .assign import task_aligned_assign

    inputs = _assign_scene(box_dtype, score_dtype, torch.Generator().manual_seed(11))
    worst, ok = 0.0, True
    for kw in (dict(topk=10, alpha=0.5), dict(topk=13, alpha=1.0, topk2=1)):
        got = task_aligned_assign(*[t.to(device) for t in inputs], num_classes=20, beta=6.0, **kw)
        want = R.task_aligned_assign(*inputs, num_classes=20, beta=6.0, **kw)
        for i, (a, b) in enumerate(zip(got, want)):
            a = a.cpu()
            if i == 2:  # the scores: in [0, 1]
                ulp = torch.finfo(torch.float64 if box_dtype == torch.float64 else torch.float32).eps
                err = (a.double() - b.double()).abs().max().item() / (16 * ulp)
                worst = max(worst, err)
                ok &= err <= 1
            else:
                ok &= a.dtype == b.dtype and torch.equal(a, b)
    return ok, worst


def _mask_scene(gen, overlap):
    """2 images of 32 prototypes of 20 x 24, 12 positives: boxes inside, across and outside
    the grid, with integer and fractional edges; either ground-truth form."""
    P, B, H, W = 12, 2, 20, 24
    coef = torch.randn(P, 32, dtype=torch.float64, generator=gen) * 0.3
    proto = torch.randn(B, 32, H, W, dtype=torch.float64, generator=gen) * 0.5
    xy = torch.rand(P, 2, dtype=torch.float64, generator=gen) * 26 - 1
    wh = torch.rand(P, 2, dtype=torch.float64, generator=gen) * 12 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[::3] = boxes[::3].round()
    area = wh.prod(1) / (H * W)
    bi = torch.randint(0, B, (P,), generator=gen)
    if overlap:
        masks, mi = torch.randint(0, 4, (B, H, W), generator=gen), torch.randint(0, 3, (P,), generator=gen)
    else:
        masks = (torch.rand(5, H, W, generator=gen) < 0.4).double()
        mi = torch.randint(0, 5, (P,), generator=gen)
    return coef, proto, (bi, boxes, area, masks, mi, overlap)


def _check_mask(device, dtype):
    """prototype_mask_loss against reference.py: the loss ('sum' and 'none') and the gradients
    of the coefficients and the prototypes, in both ground-truth forms."""
    worst, ok = [0.0, 0.0], True
    for overlap in (True, False):
        coef, proto, rest = _mask_scene(torch.Generator().manual_seed(5), overlap)
        for red in ("sum", "none"):
            c = coef.to(dtype).to(device).requires_grad_()
            p = proto.to(dtype).to(device).requires_grad_()
            out = DF.prototype_mask_loss(c, p, *[t.to(device) for t in rest[:-1]], rest[-1], red)
            cr = c.detach().double().cpu().requires_grad_()
            pr = p.detach().double().cpu().requires_grad_()
            exp = R.prototype_mask_loss(cr, pr, *rest, reduction=red)
            up = torch.linspace(0.5, 2, exp.numel(), dtype=torch.float64).view(exp.shape).to(dtype)
            got = (out, *torch.autograd.grad(out, (c, p), up.to(device)))
            want = (exp, *torch.autograd.grad(exp, (cr, pr), up.double()))
            for i, (a, b) in enumerate(zip(got, want)):
                b16 = b.detach().to(dtype).double()
                rtol, atol = tolerance(b16, dtype, 2)
                diff = (a.detach().double().cpu() - b16).abs()
                bound = atol + rtol * b16.abs()
                ok &= bool((diff <= bound).all())
                worst[min(i, 1)] = max(worst[min(i, 1)], (diff / bound.clamp_min(1e-300)).max().item())
    return ok, worst


def _gradcheck(case):
    name, _, make, fused, _ = case
    gen = torch.Generator().manual_seed(7)
    x64, t64 = make(3, gen)
    if name.startswith("ciou"):
        return None  # CIoU holds alpha constant by design: finite differences disagree
    return torch.autograd.gradcheck(lambda x: fused(x, t64), (x64.requires_grad_(),))


def run(devices=None, log=print):
    from . import build_info

    info = build_info()
    devices = devices or (["cpu"] + (["cuda"] if info["cuda_available"] else []))
    t0 = time.perf_counter()
    rows, failures = [], 0
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    log(f"{'op':<12}{'device':<7}{'dtype':<10}{'sizes':<10}{'worst err/tol (value, grad)':<30}result")
    for case in _cases():
        for device in devices:
            for dtype in dtypes:
                ok, worst = True, [0.0, 0.0]
                for n, red in ((1, False), (37, False), (1000, True)):
                    try:
                        good, errs = _check(case, device, dtype, n, red)
                    except Exception as e:  # a crash is a failure, with its message
                        good, errs = False, [float("nan")] * 2
                        log(f"  {case[0]} {device} {dtype} n={n}: {type(e).__name__}: {e}")
                    ok &= good
                    worst = [max(a, b) for a, b in zip(worst, errs)]
                failures += not ok
                rows.append((case[0], device, str(dtype).replace("torch.", ""), ok))
                log(f"{case[0]:<12}{device:<7}{str(dtype).replace('torch.', ''):<10}"
                    f"{'1,37,1000':<10}{worst[0]:>10.3f}, {worst[1]:<18.3f}{'PASS' if ok else 'FAIL'}")
        gc = _gradcheck(case)
        if gc is not None:
            failures += not gc
            log(f"{case[0]:<12}{'cpu':<7}{'float64':<10}{'gradcheck':<10}{'':<30}{'PASS' if gc else 'FAIL'}")
    for device in devices:
        for dtype in dtypes:
            try:
                ok, worst = _check_mask(device, dtype)
            except Exception as e:  # a crash is a failure, with its message
                ok, worst = False, [float("nan")] * 2
                log(f"  mask {device} {dtype}: {type(e).__name__}: {e}")
            failures += not ok
            rows.append(("mask", device, str(dtype).replace("torch.", ""), ok))
            log(f"{'mask':<12}{device:<7}{str(dtype).replace('torch.', ''):<10}{'12 pos':<10}"
                f"{worst[0]:>10.3f}, {worst[1]:<18.3f}{'PASS' if ok else 'FAIL'}")
    coef, proto, (bi, boxes, area, masks, mi, _) = _mask_scene(torch.Generator().manual_seed(6), False)
    small = (bi[:4], boxes[:4] / 3, area[:4], masks[:, :7, :8], mi[:4], False)  # 7 x 8 pixels
    gc = torch.autograd.gradcheck(lambda c, p: DF.prototype_mask_loss(c, p, *small),
                                  (coef[:4, :3].clone().requires_grad_(),
                                   proto[:, :3, :7, :8].clone().requires_grad_()))
    failures += not gc
    log(f"{'mask':<12}{'cpu':<7}{'float64':<10}{'gradcheck':<10}{'':<30}{'PASS' if gc else 'FAIL'}")
    for device in devices:
        for box_dtype, score_dtype in ((torch.float32, torch.float32), (torch.float32, torch.float16),
                                       (torch.float64, torch.float64)):
            try:
                ok, worst = _check_assigner(device, box_dtype, score_dtype)
            except Exception as e:  # a crash is a failure, with its message
                ok, worst = False, float("nan")
                log(f"  assigner {device}: {type(e).__name__}: {e}")
            failures += not ok
            rows.append(("assigner", device, str(box_dtype), ok))
            dt = f"{str(box_dtype)[6:]}/{str(score_dtype)[6:]}"
            log(f"{'assigner':<12}{device:<7}{dt:<17}{'3x8400':<10}{worst:>10.3f} (scores){'':<6}"
                f"{'PASS' if ok else 'FAIL'}")
    log(f"\n{len(rows)} value/gradient checks on {', '.join(devices)}, "
        f"{failures} failure(s), {time.perf_counter() - t0:.1f}s "
        f"(err/tol: the worst error as a fraction of the allowed one; <= 1 passes)")
    return failures
