"""ProbIoU of rotated boxes (xywhr), fused: `functional.probiou`, `probiou_loss`,
`batch_probiou`, the 'probiou' kinds of the box ops. Against the float64 transcription of the
formula (reference.py) and ultralytics' own `probiou` / `batch_probiou`, on the CPU kernels
and the CUDA kernels under the SIMT emulator.

The tolerance: ProbIoU = 1 - sqrt(1 - exp(-bd) + eps) with bd a sum whose log term
log(det / (4·sqrt(d1·d2))) carries an absolute rounding error of about an ulp of 1 whatever
bd is. The metric's error is then ~ulp / (2·sqrt(bd)): the box budget (5 formula lengths) holds
where bd >= 1e-3, the pairs `plausible()` keeps; nearly coinciding pairs, where it does not,
are held to ultralytics' own float32 error instead (test_near_coincident_*)."""
import math

import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R
from box_cases import assert_close_dtype
from conftest import DTYPES, drivers, on_driver

um = pytest.importorskip("ultralytics.utils.metrics")

REDUCTIONS = ["none", "mean", "sum"]


def obbs(n, gen, dtype=torch.float64, scale=20.0):
    """Rotated boxes: centres in [0, scale), sides in (0.5, scale/2), angles in (-pi, pi)."""
    xy = torch.rand(n, 2, dtype=torch.float64, generator=gen) * scale
    wh = torch.rand(n, 2, dtype=torch.float64, generator=gen) * (scale / 2) + 0.5
    r = (torch.rand(n, 1, dtype=torch.float64, generator=gen) * 2 - 1) * math.pi
    return torch.cat([xy, wh, r], -1).to(dtype)


def near(b, gen, jitter=1.0):
    """Targets that overlap their predictions: the centre moved, the sides scaled, the angle
    turned a little."""
    n = b.shape[0]
    rnd = torch.randn(n, 5, dtype=torch.float64, generator=gen)
    t = b.double().clone()
    t[:, :2] += rnd[:, :2] * jitter
    t[:, 2:4] *= (1 + 0.2 * rnd[:, 2:4]).abs() + 0.05
    t[:, 4] += 0.3 * rnd[:, 4]
    return t.to(b.dtype)


def plausible(p, t, dtype, floor=0.0):
    """The pairs whose Bhattacharyya distance is >= 1e-3 for the dtype-rounded inputs (see the
    module's docstring)."""
    bd = bhattacharyya(p.to(dtype).double(), t.to(dtype).double(), floor)
    keep = bd >= 1e-3
    return p[keep], t[keep]


def bhattacharyya(p, t, floor=0.0):
    # from ultralytics' own metric, in float64: 1 - iou = sqrt(1 - exp(-bd) + eps)
    hd = 1 - um.probiou(p, t, floor=floor).squeeze(-1)
    return -torch.log1p(-(hd * hd - 1e-7))


def loss_and_grads(f, inputs, g):
    out = f(*inputs)
    grads = torch.autograd.grad(out, inputs, g)
    return (out.detach(), *grads)


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ciou", [False, True], ids=["probiou", "ciou"])
@pytest.mark.parametrize("floor", [0.0, 0.01])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_parity_with_the_reference(driver, dtype, ciou, floor, reduction):
    gen = torch.Generator().manual_seed(1)
    p64 = obbs(400, gen)
    p64, t64 = plausible(p64, near(p64, gen), dtype, floor)
    assert len(p64) > 300
    w64 = torch.rand(len(p64), dtype=torch.float64, generator=gen) + 0.5
    with on_driver(driver) as (device, _):
        p = p64.to(dtype).to(device).requires_grad_()
        t = t64.to(dtype).to(device).requires_grad_()
        w = w64.to(dtype).to(device)
        out = DF.probiou_loss(p, t, ciou, floor=floor, reduction=reduction, weight=w)
        g64 = torch.randn(out.shape, dtype=torch.float64, generator=gen) if reduction == "none" \
            else torch.ones((), dtype=torch.float64)
        gp, gt = torch.autograd.grad(out, (p, t), g64.to(dtype).to(device))
    pr = p.detach().double().cpu().requires_grad_()
    tr = t.detach().double().cpu().requires_grad_()
    ref = R.probiou_loss(pr, tr, ciou, floor=floor, reduction=reduction, weight=w.double().cpu())
    rp, rt = torch.autograd.grad(ref, (pr, tr), g64.to(dtype).double())
    msg = f"{driver} {dtype} ciou={ciou} floor={floor} {reduction}"
    assert out.dtype == dtype and out.shape == ref.shape and gp.shape == p.shape, msg
    assert_close_dtype(out, ref, dtype, "value " + msg)
    assert_close_dtype(gp, rp, dtype, "grad pred " + msg)
    assert_close_dtype(gt, rt, dtype, "grad target " + msg)


@pytest.mark.parametrize("ciou", [False, True], ids=["probiou", "ciou"])
@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_equals_ultralytics_probiou_in_float64(ciou, floor):
    """Values and both gradients of ultralytics' own function (its autograd, its no_grad
    alpha): the same formula. float64: agreement to rounding."""
    gen = torch.Generator().manual_seed(2)
    p64 = obbs(2000, gen)
    t64 = near(p64, gen)
    g = torch.randn(2000, 1, dtype=torch.float64, generator=gen)
    ours = loss_and_grads(lambda a, b: DF.probiou(a, b, ciou, floor=floor),
                          [p64.clone().requires_grad_(), t64.clone().requires_grad_()], g)
    theirs = loss_and_grads(lambda a, b: um.probiou(a, b, ciou, floor=floor),
                            [p64.clone().requires_grad_(), t64.clone().requires_grad_()], g)
    assert ours[0].shape == theirs[0].shape == (2000, 1)
    for a, b, name in zip(ours, theirs, ("value", "grad obb1", "grad obb2")):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("driver", drivers())
def test_near_coincident_pairs_as_close_as_ultralytics_own_float32(driver):
    """Pairs within rounding of each other (bd down to its eps clamp), where the float32
    metric is ill-conditioned (an ulp of error in bd moves sqrt(bd + eps) by up to ~1e-3): as
    close to ultralytics' float64 result as ultralytics' own float32 one, per kind of pair —
    the largest error within 1.5x of its largest, the mean error below its mean (this one
    forms 1 - exp(-bd) without that cancellation)."""
    gen = torch.Generator().manual_seed(3)
    p = obbs(3000, gen)
    t = p.clone()
    t[:1000] += torch.randn(1000, 5, dtype=torch.float64, generator=gen) * 1e-4
    t[1000:2000, 4] += math.pi  # the same box turned half a turn
    t[2000:, 2:4] = t[2000:, 2:4].mean(-1, keepdim=True)  # squares: the angle is irrelevant
    p[2000:, 2:4] = t[2000:, 2:4]
    t[2000:, 4] += torch.rand(1000, dtype=torch.float64, generator=gen)
    p32, t32 = p.float(), t.float()
    exact = um.probiou(p32.double(), t32.double())
    own = (um.probiou(p32, t32).double() - exact).abs()
    with on_driver(driver) as (device, _):
        ours = DF.probiou(p32.to(device), t32.to(device)).double().cpu()
    err = (ours - exact).abs()
    for name, rows in (("jittered", slice(0, 1000)), ("half a turn", slice(1000, 2000)),
                       ("squares", slice(2000, 3000))):
        e, o = err[rows], own[rows]
        assert e.max() <= 1.5 * o.max() and e.mean() < o.mean(), (name, e.max(), o.max(),
                                                                  e.mean(), o.mean())


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_adversarial_pairs(driver, floor):
    """Angles 0, ±pi/4, pi/2; near-square; tiny; far apart (bd clamped at 100: no gradient);
    zero-size boxes (a singular covariance without floor); float64 against the reference,
    whose rules are the documented ones: finite gradients, sqrt's derivative at 0 taken as 0.
    (ultralytics' autograd gives inf·0 there unless its clamp at 0 stops it first, which
    depends on the torch version's clamp rule at exactly 0.)"""
    rows = [
        ([10, 10, 8, 4, 0.0], [10.5, 9.5, 8, 4, 0.0]),
        ([10, 10, 8, 4, math.pi / 4], [11, 10, 7, 5, -math.pi / 4]),
        ([10, 10, 8, 4, math.pi / 2], [10, 10, 4, 8, 0.0]),  # the same box
        ([10, 10, 5, 5.0001, 0.3], [10.2, 10, 5, 5, -1.2]),
        ([10, 10, 1e-3, 2e-3, 0.5], [10, 10.001, 1e-3, 1e-3, 0.1]),
        ([0, 0, 2, 1, 0.1], [500, 300, 2, 1, 0.1]),  # far apart: bd = 100
        ([3, 3, 0, 0, 0.0], [3.5, 3, 2, 1, 0.2]),  # a zero-size prediction
        ([3, 3, 0, 2, 0.7], [3, 3, 2, 0, 0.7]),  # segments
        ([1, 2, 3, 4, 50.0], [1, 2, 3, 4, -50.0]),  # angles of many turns
    ]
    p = torch.tensor([a for a, _ in rows], dtype=torch.float64)
    t = torch.tensor([b for _, b in rows], dtype=torch.float64)
    g = torch.linspace(0.5, 1.5, len(rows), dtype=torch.float64)[:, None]
    with on_driver(driver) as (device, _):
        ours = loss_and_grads(lambda a, b: DF.probiou(a, b, floor=floor),
                              [p.to(device).requires_grad_(), t.to(device).requires_grad_()],
                              g.to(device))
    ref = loss_and_grads(lambda a, b: R.probiou(a, b, floor=floor),
                         [p.clone().requires_grad_(), t.clone().requires_grad_()], g)
    for a, b, name in zip(ours, ref, ("value", "grad pred", "grad target")):
        a = a.cpu()
        assert torch.isfinite(a).all(), (name, a)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    # where ultralytics' autograd is finite it agrees; the far pair's gradient is exactly 0
    theirs = loss_and_grads(lambda a, b: um.probiou(a, b, floor=floor),
                            [p.clone().requires_grad_(), t.clone().requires_grad_()], g)
    for a, b in zip(ours, theirs):
        fin = torch.isfinite(b)
        torch.testing.assert_close(a.cpu()[fin], b[fin], rtol=1e-9, atol=1e-12)
    assert (ours[1][5] == 0).all() and (ours[2][5] == 0).all()


def test_nan_propagates():
    p = torch.tensor([[1.0, 2, 3, 4, float("nan")], [1, 2, 3, 4, 0.5]], requires_grad=True)
    t = torch.tensor([[1.0, 2, 3, 4, 0.0], [1, 2, 3, 4, 0.4]])
    out = DF.probiou(p, t)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    (g,) = torch.autograd.grad(out.sum(), p)
    assert torch.isfinite(g[1]).all()


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch_probiou_equals_ultralytics(driver, dtype):
    gen = torch.Generator().manual_seed(4)
    a, b = obbs(37, gen), obbs(45, gen)
    b[:10] = near(a[:10], gen)
    exact = um.batch_probiou(a.to(dtype).double(), b.to(dtype).double())
    A, B = torch.stack([a, a.flip(0)]), torch.stack([b[:8], b[8:16]])  # batched: [2, 37] x [2, 8]
    with on_driver(driver) as (device, _):
        m = DF.batch_probiou(a.to(dtype).to(device), b.to(dtype).to(device))
        batched = DF.box_iou_matrix(A.to(dtype).to(device), B.to(dtype).to(device), "probiou",
                                    "xywhr")
    assert m.shape == (37, 45) and m.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(m.cpu(), exact, rtol=1e-10, atol=1e-12)
    else:
        own = (um.batch_probiou(a.float(), b.float()).double() - um.batch_probiou(
            a.float().double(), b.float().double())).abs()
        tol = {torch.float32: 0, torch.float16: 2**-11, torch.bfloat16: 2**-8}[dtype]
        err = (m.cpu().double() - exact).abs()
        assert (err <= 2 * own + 1e-6 + tol * exact.abs()).all(), err.max()
    ref = R.box_iou_matrix(A.to(dtype).double(), B.to(dtype).double(), "probiou", "xywhr")
    assert batched.shape == (2, 37, 8)
    assert_close_dtype(batched.cpu(), ref, dtype, "batched")
    with pytest.raises(RuntimeError, match="forward-only"):
        DF.box_iou_matrix(a.requires_grad_(), b, "probiou", "xywhr").sum().backward()


def test_numpy_inputs_as_ultralytics():
    gen = torch.Generator().manual_seed(5)
    a, b = obbs(5, gen), obbs(6, gen)
    torch.testing.assert_close(DF.batch_probiou(a.numpy(), b.numpy()),
                               um.batch_probiou(a.numpy(), b.numpy()), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("floor", [0.0, 0.01])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(floor, reduction):
    """CIoU excluded: its alpha is a constant by design (as ultralytics' no_grad), so finite
    differences disagree; its gradient is checked against ultralytics' autograd above."""
    gen = torch.Generator().manual_seed(6)
    p = obbs(8, gen)
    t = near(p, gen)
    w = torch.rand(8, dtype=torch.float64, generator=gen) + 0.5

    def f(p, t):
        return torch.ops.detloss.box_loss(p, t, w, "probiou", "xywhr", 1e-7, reduction, floor)

    assert torch.autograd.gradcheck(f, (p.requires_grad_(), t.requires_grad_()))


def test_opcheck():
    gen = torch.Generator().manual_seed(7)
    p = obbs(6, gen, torch.float32)
    t = near(p, gen)
    ops = torch.ops.detloss
    for kind in ("probiou", "probiou_ciou"):
        for red in REDUCTIONS:
            torch.library.opcheck(ops.box_loss.default, (p.clone().requires_grad_(),
                                  t.clone().requires_grad_(), None, kind, "xywhr", 1e-7, red, 0.01))
    torch.library.opcheck(ops.box_loss.default, (p[:1].clone().requires_grad_(), t, torch.rand(6),
                                                 "probiou", "xywhr", 1e-7, "sum"))
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(ops.box_backward.default, (torch.randn(6), p, t, None, "probiou",
                                                         "xywhr", 1e-7, "none", mask, 0.01))
        torch.library.opcheck(ops.box_loss_with_grad.default,
                              (p, t, None, "probiou_ciou", "xywhr", 1e-7, "mean", mask, 0.0))
    torch.library.opcheck(ops.box_iou_matrix.default, (p, t[:4], "probiou", "xywhr", 1e-7))
    torch.library.opcheck(ops.box_iou_matrix.default,
                          (p[None].repeat(2, 1, 1), t[None].repeat(2, 1, 1), "probiou", "xywhr",
                           1e-7, 0.01))


def test_compile_fullgraph_and_module():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(8)
    head = torch.nn.Linear(16, 5)
    crit = DN.ProbIoULoss(floor=0.01, reduction="sum")
    t = obbs(64, gen, torch.float32, scale=2.0)

    def step(x):
        out = head(x)
        return crit(torch.cat([out[:, :2], out[:, 2:4].exp(), out[:, 4:]], -1), t)

    x = torch.randn(64, 16, generator=gen)
    compiled = torch.compile(step, fullgraph=True)
    gc = torch.autograd.grad(compiled(x), list(head.parameters()))
    ge = torch.autograd.grad(step(x), list(head.parameters()))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)
    p = obbs(10, gen)
    t = near(p, gen)
    torch.testing.assert_close(DN.ProbIoULoss(True, reduction="none")(p, t),
                               1 - um.probiou(p, t, True).squeeze(-1), rtol=1e-10, atol=1e-12)


def test_half_metric_is_formed_in_float32():
    gen = torch.Generator().manual_seed(9)
    p = obbs(50, gen)
    t = near(p, gen)
    for dt in (torch.float16, torch.bfloat16):
        m = DF.probiou(p.to(dt), t.to(dt))
        assert m.dtype == dt and m.shape == (50, 1)
        want = um.probiou(p.to(dt).double(), t.to(dt).double())
        assert ((m.double() - want).abs() <= 2 * torch.finfo(dt).eps * want.abs() + 1e-5).all()


def test_autocast_runs_in_float32():
    gen = torch.Generator().manual_seed(10)
    p = obbs(20, gen, torch.float32)
    t = near(p, gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DF.probiou_loss(p.bfloat16(), t.bfloat16(), reduction="none")
    assert out.dtype == torch.float32


def test_errors_name_the_argument():
    gen = torch.Generator().manual_seed(11)
    p = obbs(5, gen, torch.float32)
    with pytest.raises(ValueError, match=r"obb1 must have shape \[\.\.\., 5\] \(xywhr\), got \[5, 4\]"):
        DF.probiou(p[:, :4], p)
    with pytest.raises(TypeError, match="obb2 must be a floating tensor of rotated boxes"):
        DF.probiou(p, p.long())
    with pytest.raises(ValueError, match=r"pred must have shape \[\.\.\., 5\], got \[5, 4\] \(box_format 'xywhr'\)"):
        DF.iou_loss(p[:, :4], p, "probiou", "xywhr")
    with pytest.raises(ValueError, match="kind 'probiou' takes box_format 'xywhr'"):
        DF.iou_loss(p, p, "probiou", "xywh")
    with pytest.raises(ValueError, match="kind 'giou' takes box_format 'xyxy' or 'xywh', got 'xywhr'"):
        DF.iou_loss(p, p, "giou", "xywhr")
    with pytest.raises(ValueError, match="floor must be a finite number >= 0, got -1"):
        DF.probiou_loss(p, p, floor=-1.0)
    with pytest.raises(ValueError, match="floor .* applies to the 'probiou' kinds only"):
        DF.iou_loss(p[:, :4], p[:, :4], "iou", floor=0.01)
    with pytest.raises(ValueError, match=r"boxes1 and boxes2 must be \[N, 5\] and \[M, 5\]"):
        DF.box_iou_matrix(p, p[None], "probiou", "xywhr")
    with pytest.raises(ValueError, match="reduction must be one of"):
        DN.ProbIoULoss(reduction="max")
