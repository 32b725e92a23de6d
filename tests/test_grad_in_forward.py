"""The gradient computed in the forward, for the box and distribution families (the
classification family: tests/test_cls_index.py; the mask loss: tests/test_mask.py): the forward of a differentiable call runs
the *_with_grad op, the backward only scales (nothing for loss.backward() on the CPU), a
retained graph's second backward recomputes the same bits, inference computes nothing extra."""
import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.reference as R
from conftest import DTYPES, OpSpy, assert_close_dtype, devices, drivers, on_driver


def boxes(n, dtype, device, gen):
    xy = torch.rand(n, 2, generator=gen) * 50
    wh = torch.rand(n, 2, generator=gen) * 20 + 1
    t = torch.cat([xy, xy + wh], -1)
    p = t + torch.randn(n, 4, generator=gen) * 3
    return p.to(dtype).to(device), t.to(dtype).to(device)


def box_case(dtype, device, reduction, target_grad=False):
    g = torch.Generator().manual_seed(0)
    p, t = boxes(40, dtype, device, g)
    p = p.view(5, 8, 4)[:, :1].contiguous()  # [5, 1, 4]: broadcast against [5, 8, 4]
    t = t.view(5, 8, 4)
    p.requires_grad_()
    if target_grad:
        t.requires_grad_()
    return ("box_loss", lambda: DF.iou_loss(p, t, "ciou", reduction=reduction),
            [p, t] if target_grad else [p])


def dfl_case(dtype, device, reduction, bins=16):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(50, bins, generator=g) * 2).to(dtype).to(device).requires_grad_()
    y = (torch.rand(50, generator=g) * (bins - 1)).to(device)
    return "dfl_loss", lambda: DF.distribution_focal_loss(z, y, reduction=reduction), [z]


CASES = {"box": box_case, "box_both": lambda *a: box_case(*a, target_grad=True),
         "dfl": dfl_case, "dfl_long": lambda *a: dfl_case(*a, bins=300)}


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("case", list(CASES))
def test_inference_computes_no_gradient(case, driver):
    with on_driver(driver) as (device, ns):
        name, f, inputs = CASES[case](torch.float32, device, "sum")
        with torch.no_grad(), OpSpy() as spy:
            f()
    assert f"{ns}::{name}" in spy.ops and f"{ns}::{name}_with_grad" not in spy.ops, spy.ops


def scale_launches():
    """How often the emulated CUDA drivers' in-place scale kernel has run."""
    from emulated_cuda import kernels

    return sum(n for _, name, n in kernels() if "ScaleUnit" in name)


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_backward_only_scales(case, reduction, driver):
    """The backward scales the forward's gradient in place: for an unreduced loss one mul_ per
    input; for a reduced one, one mul_ on the CPU, the scale kernel on the CUDA drivers (no
    aten op: the 0-dim upstream is read on the device). Upstream exactly 1: no pass at all on
    the CPU; the kernel's threads stop at once on the CUDA drivers."""
    with on_driver(driver) as (device, ns):
        name, f, inputs = CASES[case](torch.float32, device, reduction)
        once = torch.autograd.grad(f(), inputs, torch.ones(() if reduction != "none" else f().shape,
                                                           device=device))
        with OpSpy() as fwd:
            out = f()
        assert f"{ns}::{name}_with_grad" in fwd.ops, fwd.ops
        up = torch.full(out.shape, 2.0, device=device)
        launched = scale_launches() if driver == "emulated" else 0
        with OpSpy() as bwd:
            grads = torch.autograd.grad(out, inputs, up)
        assert not any(o.startswith(f"{ns}::") for o in bwd.ops), bwd.ops  # no kernel re-run
        kernel_scale = driver != "cpu" and reduction != "none"
        assert bwd.ops.count("aten::mul_") == (0 if kernel_scale else len(inputs)), bwd.ops
        assert "aten::mul" not in bwd.ops, bwd.ops
        if driver == "emulated":
            assert scale_launches() - launched == (len(inputs) if kernel_scale else 0)
        for g, g1 in zip(grads, once):
            assert torch.equal(g, 2 * g1)  # scaling by 2 is exact
        if reduction != "none":
            out = f()
            with OpSpy() as bwd:
                torch.autograd.grad(out, inputs)
            assert "aten::mul_" not in bwd.ops and "aten::mul" not in bwd.ops, bwd.ops


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_retain_graph_backward_twice_same_bits(case, dtype, reduction, device):
    name, f, inputs = CASES[case](dtype, device, reduction)
    out = f()
    up = (torch.rand(out.shape) + 0.5).to(dtype).to(device) if reduction == "none" else \
        torch.tensor(0.37, dtype=dtype, device=device)
    first = torch.autograd.grad(out, inputs, up, retain_graph=True)
    second = torch.autograd.grad(out, inputs, up, retain_graph=True)  # recomputed
    for a, b in zip(first, second):
        assert torch.equal(a, b), (case, dtype, reduction)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_box_gradients_of_both_boxes_against_reference(reduction, device):
    """Both boxes require grad and pred broadcasts: the forward computes both gradients, the
    backward sums pred's back to its shape."""
    g = torch.Generator().manual_seed(0)
    p64, t64 = boxes(40, torch.float64, "cpu", g)
    p64 = p64.view(5, 8, 4)[:, :1]
    t64 = t64.view(5, 8, 4)
    p = p64.clone().to(device).requires_grad_()
    t = t64.clone().to(device).requires_grad_()
    pr, tr = p64.clone().requires_grad_(), t64.clone().requires_grad_()
    for kind in ("iou", "giou", "diou"):
        out = DF.iou_loss(p, t, kind, reduction=reduction)
        ref = R.iou_loss(pr, tr, kind, reduction=reduction)
        up = torch.rand(ref.shape, dtype=torch.float64) + 0.5
        ga = torch.autograd.grad(out, [p, t], up.to(device))
        gb = torch.autograd.grad(ref, [pr, tr], up)
        assert ga[0].shape == p.shape
        for a, b in zip(ga, gb):
            assert_close_dtype(a, b, torch.float64)


def test_amp_loss_scale_through_every_family():
    """GradScaler-like upstream (2^16) after a mean: the scaled gradients equal the reference."""
    x = torch.randn(64, 80, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(64, 80, dtype=torch.float64) < 0.05).double()
    z = torch.randn(64, 16, dtype=torch.float64, requires_grad=True)
    y = torch.rand(64, dtype=torch.float64) * 15
    g = torch.Generator().manual_seed(0)
    p, b = boxes(64, torch.float64, "cpu", g)
    p.requires_grad_()
    for fused, ref, inp in (
            (lambda: DF.sigmoid_focal_loss(x, t, reduction="mean"),
             lambda xx: R.sigmoid_focal_loss(xx, t, reduction="mean"), x),
            (lambda: DF.distribution_focal_loss(z, y), lambda zz: R.distribution_focal_loss(zz, y), z),
            (lambda: DF.iou_loss(p, b, "ciou"), lambda pp: R.iou_loss(pp, b, "ciou"), p)):
        (ga,) = torch.autograd.grad(fused() * 65536.0, inp)
        xr = inp.detach().clone().requires_grad_()
        (gb,) = torch.autograd.grad(ref(xr) * 65536.0, xr)
        assert_close_dtype(ga / 65536, gb / 65536, torch.float64)
    # the mask loss: both differentiable inputs
    from test_mask import scene

    coef, proto, *rest = scene(True, g)
    c, pr = coef.clone().requires_grad_(), proto.clone().requires_grad_()
    got = torch.autograd.grad(DF.prototype_mask_loss(c, pr, *rest) * 65536.0, (c, pr))
    cr, prr = coef.clone().requires_grad_(), proto.clone().requires_grad_()
    want = torch.autograd.grad(R.prototype_mask_loss(cr, prr, *rest) * 65536.0, (cr, prr))
    for a, b in zip(got, want):
        assert_close_dtype(a / 65536, b / 65536, torch.float64)
