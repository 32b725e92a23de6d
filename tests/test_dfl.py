"""The distribution family: DFL, the distribution integral and the distillation KL against
the pure-PyTorch reference (values, gradients), edge targets, large logits, registration (gradcheck,
opcheck, torch.compile), the ultralytics-shaped nn module, and argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R
from conftest import DTYPES, OpSpy, assert_close_dtype as _assert_close_dtype, devices, drivers, on_driver

_BINS_IN_CHECK = [16]
F32_EPS = torch.finfo(torch.float32).eps


def assert_close_dtype(actual, expected, dtype, msg=""):
    # a row's log-sum-exp adds R terms in opmath: its rounding grows with R, and every
    # probability (hence value and gradient) inherits it; budget one ~10-op formula per 16 bins
    _assert_close_dtype(actual, expected, dtype, msg, ops=1 + _BINS_IN_CHECK[0] // 16)

BINS = [2, 7, 16, 17, 64, 256]


def targets_for(n, bins, gen=None):
    """Continuous targets across the range, plus the edges: 0, integers, R - 1 and beyond."""
    y = torch.rand(n, dtype=torch.float64, generator=gen) * (bins - 1)
    edges = torch.tensor([0.0, 1.0, bins / 2, bins - 1.0, bins - 1 - 0.01, bins + 3.0, -2.0],
                         dtype=torch.float64)
    y[: len(edges)] = edges[: min(len(edges), n)]
    return y


def check(bins, dtype, device, reduction, shape=(301,), scale=3.0, weight=None, integral=True):
    _BINS_IN_CHECK[0] = bins
    z64 = torch.randn(*shape, bins, dtype=torch.float64) * scale
    y = targets_for(int(torch.tensor(shape).prod()), bins).reshape(shape)
    z = z64.to(dtype).to(device).requires_grad_()
    zr = z.detach().double().cpu().requires_grad_()
    w = None if weight is None else weight.to(dtype).to(device)
    out = DF.distribution_focal_loss(z, y.to(device), reduction=reduction, weight=w)
    ref = R.distribution_focal_loss(zr, y, reduction=reduction,
                                    weight=None if w is None else w.double().cpu())
    msg = f"dfl R={bins} {dtype} {device} {reduction}"
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close_dtype(out, ref, dtype, "value " + msg)
    g = torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.ones(())
    (gz,) = torch.autograd.grad(out, z, g.to(dtype).to(device))
    (gr,) = torch.autograd.grad(ref, zr, g.to(dtype).double())
    assert_close_dtype(gz, gr, dtype, "grad " + msg)
    if integral:
        d = DF.distribution_integral(z)
        dr = R.distribution_integral(zr)
        assert d.shape == shape and d.dtype == dtype
        assert_close_dtype(d, dr, dtype, "integral " + msg)
        gi = torch.randn(shape, dtype=torch.float64).to(dtype)
        (gz,) = torch.autograd.grad(d, z, gi.to(device))
        (gr,) = torch.autograd.grad(dr, zr, gi.double())
        assert_close_dtype(gz, gr, dtype, "integral grad " + msg)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bins", BINS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_parity(bins, dtype, device, reduction):
    check(bins, dtype, device, reduction)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(1,), (5, 4), (2, 3, 4), (0,), (4, 0)], ids=str)
def test_shapes_and_weight(shape, device):
    check(16, torch.float64, device, "none", shape=shape)
    check(17, torch.float32, device, "sum", shape=shape)
    if shape and shape[-1] == 4:
        check(16, torch.float64, device, "mean", shape=shape, weight=torch.rand(shape[-1]) + 0.5)


@pytest.mark.parametrize("device", devices())
def test_empty_mean_is_zero(device):
    z = torch.randn(0, 16, device=device, requires_grad=True)
    out = DF.distribution_focal_loss(z, torch.zeros(0, device=device))
    assert out.item() == 0.0
    out.backward()
    assert z.grad.shape == (0, 16)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e4), (torch.float16, 6e4),
                                       (torch.bfloat16, 1e4), (torch.float64, 1e4)], ids=str)
def test_large_logits_stay_finite(dtype, big, device):
    _BINS_IN_CHECK[0] = 16
    z = (torch.rand(64, 16, dtype=torch.float64) * 2 - 1) * big  # |z| <= big, finite in dtype
    z[0] = big
    z[1] = -big
    z[2, 3] = big
    z = z.to(dtype).to(device).requires_grad_()
    y = targets_for(64, 16).to(device)
    out = DF.distribution_focal_loss(z, y, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), z)
    assert torch.isfinite(g).all()  # softmax - one-hot: always in [-1, 1]
    ref = R.distribution_focal_loss(z.detach().double().cpu(), y.cpu(), reduction="none")
    # the loss itself is finite wherever the dtype can hold it (with fp16 logits of +-60000 a
    # loss of 1e5 is not representable: it rounds to +inf, never NaN); that is torch's
    # cross_entropy in fp16 too, and under autocast the loss comes back in float32, finite
    fits = ref.abs() <= torch.finfo(dtype).max
    assert torch.isfinite(out.cpu()[fits]).all() and not torch.isnan(out).any()
    assert_close_dtype(out, ref, dtype)
    if dtype == torch.float16:
        with torch.autocast(device_type=device, dtype=torch.float16):
            out32 = DF.distribution_focal_loss(z, y, reduction="none")
        assert out32.dtype == torch.float32 and torch.isfinite(out32).all()
    d = DF.distribution_integral(z)
    (g,) = torch.autograd.grad(d.sum(), z)
    assert torch.isfinite(d).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("device", devices())
def test_target_clamping_and_nan(device):
    z = torch.randn(1, 16, dtype=torch.float64, device=device).repeat(6, 1).requires_grad_()
    y = torch.tensor([-5.0, 0.0, 14.99, 15.0, 100.0, float("nan")], dtype=torch.float64,
                     device=device)
    out = DF.distribution_focal_loss(z, y, reduction="none")
    # clamped to [0, R - 1 - 0.01]: -5 acts as 0; 15 and 100 act as 14.99
    assert out[0].item() == pytest.approx(out[1].item(), rel=1e-12)
    assert out[3].item() == pytest.approx(out[2].item(), rel=1e-12)
    assert out[4].item() == pytest.approx(out[2].item(), rel=1e-12)
    # a NaN target: NaN loss and gradient for its row only (no host sync to detect it)
    assert torch.isnan(out[5]) and torch.isfinite(out[:5]).all()
    (g,) = torch.autograd.grad(out.sum(), z)
    assert torch.isnan(g[5]).all() and torch.isfinite(g[:5]).all()


def test_matches_ultralytics_dfloss_and_cross_entropy_form():
    # ultralytics.utils.loss.DFLoss (8.3), transcribed
    def ultra(pred_dist, target, reg_max=16):
        target = target.clamp_(0, reg_max - 1 - 0.01)
        tl = target.long()
        tr = tl + 1
        wl = tr - target
        wr = 1 - wl
        return (F.cross_entropy(pred_dist, tl.view(-1), reduction="none").view(tl.shape) * wl
                + F.cross_entropy(pred_dist, tr.view(-1), reduction="none").view(tl.shape) * wr
                ).mean(-1, keepdim=True)

    pred = torch.randn(50 * 4, 16, requires_grad=True)
    target = torch.rand(50, 4) * 17 - 0.5
    ours = DN.DistributionFocalLoss(16)(pred, target.clone())
    theirs = ultra(pred, target.clone())
    assert ours.shape == theirs.shape == (50, 1)
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-6)
    (g1,) = torch.autograd.grad(ours.sum(), pred)
    (g2,) = torch.autograd.grad(theirs.sum(), pred)
    torch.testing.assert_close(g1, g2, rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="reg_max must be an int >= 2"):
        DN.DistributionFocalLoss(1)


def test_integral_is_the_yolov8_decode():
    # ultralytics DFL decode: softmax over bins, then a 1x1 conv with weights 0..R-1
    z = torch.randn(2, 4, 16, 80, requires_grad=True)  # [b, 4 sides, R, anchors]
    proj = torch.arange(16, dtype=torch.float32)
    theirs = (z.softmax(2) * proj.view(1, 1, 16, 1)).sum(2)
    ours = DF.distribution_integral(z.transpose(2, 3)).reshape(2, 4, 80)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bins", [2, 16, 17, 65])
def test_gradcheck(bins):
    z = (torch.randn(5, bins, dtype=torch.float64) * 2).requires_grad_()
    y = targets_for(5, bins)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    for red in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda z: torch.ops.detloss.dfl_loss(z, y, w, red)[0], (z,))
    assert torch.autograd.gradcheck(lambda z: torch.ops.detloss.dfl_integral(z)[0], (z,))


def test_opcheck():
    z = torch.randn(6, 16)
    y = torch.rand(6) * 15
    for red in ("none", "mean", "sum"):
        torch.library.opcheck(torch.ops.detloss.dfl_loss.default,
                              (z.clone().requires_grad_(), y, None, red))
    torch.library.opcheck(torch.ops.detloss.dfl_loss.default,
                          (z.clone().requires_grad_(), y, torch.rand(6), "mean"))
    torch.library.opcheck(torch.ops.detloss.dfl_integral.default, (z.clone().requires_grad_(),))
    _, stats = torch.ops.detloss.dfl_loss(z, y, None, "none")
    assert stats.shape == (6, 2)
    torch.library.opcheck(torch.ops.detloss.dfl_backward.default,
                          (torch.randn(6), z, y, stats, None, "none"))
    _, stats = torch.ops.detloss.dfl_integral(z)
    torch.library.opcheck(torch.ops.detloss.dfl_integral_backward.default,
                          (torch.randn(6), z, stats))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    head = torch.nn.Linear(8, 4 * 16)
    crit = DN.DistributionFocalLoss(16)

    def step(x, t):
        dist = head(x)
        return crit(dist, t).mean() + DF.distribution_integral(dist.view(-1, 4, 16)).sum() * 1e-3

    x = torch.randn(32, 8)
    t = torch.rand(32, 4) * 15
    compiled = torch.compile(step, fullgraph=True)
    out_c = compiled(x, t)
    gc = torch.autograd.grad(out_c, list(head.parameters()))
    out_e = step(x, t)
    ge = torch.autograd.grad(out_e, list(head.parameters()))
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cpu_gradient_computed_in_the_forward(reduction):
    """On CPU the forward also writes the gradient and the backward scales it in place: it
    must still be exact for any upstream gradient, a retained graph used twice, and gradient
    accumulation over two steps."""
    z = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    y = targets_for(300, 16)
    zr = z.detach().clone().requires_grad_()
    loss = DF.distribution_focal_loss(z, y, reduction=reduction)
    ref = R.distribution_focal_loss(zr, y, reduction=reduction)
    g = torch.randn(ref.shape, dtype=torch.float64) * 3
    (gr,) = torch.autograd.grad(ref, zr, g)
    (a,) = torch.autograd.grad(loss, z, g, retain_graph=True)
    (b,) = torch.autograd.grad(loss, z, g)  # the second use recomputes
    assert_close_dtype(a, gr, torch.float64)
    assert_close_dtype(b, gr, torch.float64)
    for _ in range(2):  # accumulation into .grad (upstream exactly 1 for reduced losses)
        DF.distribution_focal_loss(z, y, reduction=reduction).sum().backward()
    (g1,) = torch.autograd.grad(R.distribution_focal_loss(zr, y, reduction=reduction).sum(), zr)
    assert_close_dtype(z.grad, 2 * g1, torch.float64)


def test_double_backward_is_a_clear_error():
    z = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(DF.distribution_focal_loss(z, torch.rand(4) * 10), z,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through dfl_loss"):
        g.sum().backward()


def test_errors_name_the_argument():
    z = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"DFL needs at least 2 bins, got pred of shape \[4, 1\]"):
        DF.distribution_focal_loss(torch.randn(4, 1), torch.rand(4))
    with pytest.raises(ValueError, match="at least 2 bins"):
        DF.distribution_integral(torch.randn(4, 1))
    with pytest.raises(ValueError, match=r"target of shape \[5\] must have the leading shape of pred \[4, 16\]"):
        DF.distribution_focal_loss(z, torch.rand(5))
    with pytest.raises(TypeError, match="pred must be a floating tensor of bin logits"):
        DF.distribution_focal_loss(z.long(), torch.rand(4))
    with pytest.raises(ValueError, match="pred.s last dim holds the bins, at most 1024"):
        DF.distribution_integral(torch.randn(2, 2000))
    with pytest.raises(RuntimeError, match="target requires grad"):
        DF.distribution_focal_loss(z.requires_grad_(), torch.rand(4, requires_grad=True))
    with pytest.raises(ValueError, match="reduction must be one of"):
        DF.distribution_focal_loss(z, torch.rand(4), reduction="avg")


def split_targets(n, bins, gen=None):
    """D-FINE's FGL targets: left bins (float, as translate_gt gives them: integers, and
    R - 1.1 for its clamped last bin) and right weights in [0, 1] (0 and 1 included)."""
    left = torch.randint(0, bins - 1, (n,), generator=gen).double()
    wr = torch.rand(n, dtype=torch.float64, generator=gen)
    left[:4] = torch.tensor([0.0, bins - 2.0, bins - 1.1, 0.0])
    wr[:4] = torch.tensor([0.0, 1.0, 1.0, 1.0])
    return left, wr


def fgl_reference(z, left, wr, weight=None):
    """D-FINE's unimodal_distribution_focal_loss rows: two cross-entropies."""
    l = left.long()
    loss = F.cross_entropy(z, l, reduction="none") * (1 - wr) + F.cross_entropy(z, l + 1, reduction="none") * wr
    return loss if weight is None else loss * weight


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bins", [2, 17, 33, 256])
def test_split_targets_are_dfines_fgl(bins, dtype, device):
    """weight_right: the left bin given (not clamped: translate_gt's R - 1.1 is bin R - 2),
    the right weight given, the left 1 - it; value and gradient against the library's two
    cross-entropies in float64, every reduction, with a weight."""
    _BINS_IN_CHECK[0] = bins
    g = torch.Generator().manual_seed(bins)
    n = 301
    z64 = torch.randn(n, bins, dtype=torch.float64, generator=g) * 3
    left, wr = split_targets(n, bins, g)
    w = torch.rand(n, dtype=torch.float64, generator=g)
    for reduction in ("none", "sum", "mean"):
        z = z64.to(dtype).to(device).requires_grad_()
        zr = z.detach().double().cpu().requires_grad_()
        wd = w.to(dtype)
        out = DF.distribution_focal_loss(z, left.float().to(device), reduction, wd.to(device),
                                         weight_right=wr.float().to(device))
        ref = fgl_reference(zr, left, wr.float().double(), wd.double())
        ref = {"none": ref, "sum": ref.sum(), "mean": ref.mean()}[reduction]
        assert out.dtype == dtype and out.shape == ref.shape
        assert_close_dtype(out, ref, dtype, f"fgl {reduction}")
        up = torch.randn(ref.shape, dtype=torch.float64, generator=g).to(dtype)
        (gz,) = torch.autograd.grad(out, z, up.to(device))
        (gr,) = torch.autograd.grad(ref, zr, up.double())
        assert_close_dtype(gz, gr, dtype, f"fgl grad {reduction}")


def test_split_targets_edges_and_errors():
    """A left bin outside [0, R - 2] (or NaN) is a NaN row, the others untouched; the integer
    left bins of int64 targets; weight_right's shape, dtype and device are checked; a plain
    call with target [..., 2] is a shape error (the split form is weight_right's)."""
    z = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    left = torch.tensor([0.0, 6.0, 6.9, 7.0, -0.5, float("nan")], dtype=torch.float64)
    wr = torch.tensor([0.25, 0.5, 1.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    out = DF.distribution_focal_loss(z, left, "none", weight_right=wr)
    assert torch.isnan(out[3:]).all() and torch.isfinite(out[:3]).all()
    torch.testing.assert_close(out[:3], fgl_reference(z[:3], left[:3], wr[:3]), rtol=1e-14, atol=1e-14)
    (gz,) = torch.autograd.grad(out.sum(), z)
    assert torch.isnan(gz[3:]).all() and torch.isfinite(gz[:3]).all()
    as_int = DF.distribution_focal_loss(z[:3], left[:3].long(), "none", weight_right=wr[:3])
    torch.testing.assert_close(as_int, out[:3], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"weight_right of shape \(5,\) must have target's shape \(6,\)"):
        DF.distribution_focal_loss(z, left, weight_right=wr[:5])
    with pytest.raises(TypeError, match="weight_right must be a floating tensor"):
        DF.distribution_focal_loss(z, left, weight_right=wr.long())
    with pytest.raises(RuntimeError, match="weight_right requires grad"):
        DF.distribution_focal_loss(z, left, weight_right=wr.clone().requires_grad_())
    with pytest.raises(RuntimeError, match="target requires grad"):
        DF.distribution_focal_loss(z, left.clone().requires_grad_(), weight_right=wr)
    with pytest.raises(TypeError, match="weight_right must be a torch.Tensor"):
        DF.distribution_focal_loss(z, left, weight_right=0.5)
    with pytest.raises(ValueError, match=r"target of shape \[6, 2\] must have the leading shape of "
                       r"pred \[6, 8\], i.e. \[6\] \(D-FINE's left bins and right weights: pass weight_right\)"):
        DF.distribution_focal_loss(z, torch.stack([left, wr], -1))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bins", BINS + [4, 5, 32, 33, 128, 129, 257, 301, 1023, 1024])
def test_cuda_matches_cpu(bins, dtype):
    shape = (20_011,)
    z64 = torch.randn(*shape, bins, dtype=torch.float64) * 3
    y = targets_for(shape[0], bins)
    _BINS_IN_CHECK[0] = bins
    outs = {}
    for dev in ("cuda", "cpu"):
        z = z64.to(dtype).to(dev).requires_grad_()
        loss = DF.distribution_focal_loss(z, y.to(dev), reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), z)
        d = DF.distribution_integral(z)
        (gi,) = torch.autograd.grad(d.sum(), z)
        outs[dev] = [t.double().cpu() for t in (loss, g, d, gi)]
    for a, b in zip(outs["cuda"], outs["cpu"]):
        assert_close_dtype(a, b, dtype)
    check(bins, dtype, "cuda", "mean", shape=(2001,))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("bins", [16, 200, 600])
def test_rows_with_minus_inf_logits(bins, device):
    # masked bins (-inf logits) carry no probability; in a row longer than 256 bins whole
    # lanes of the online-softmax walk see only -inf and must add nothing (not NaN)
    z = torch.randn(64, bins, dtype=torch.float64) * 3
    z[:, : bins // 2] = -math.inf
    y = bins / 2 + torch.rand(64, dtype=torch.float64) * (bins / 2 - 1.5)
    _BINS_IN_CHECK[0] = bins
    zc = z.to(device).requires_grad_()
    loss = DF.distribution_focal_loss(zc, y.to(device), reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), zc)
    d = DF.distribution_integral(zc)
    (gi,) = torch.autograd.grad(d.sum(), zc)
    zr = z.clone().requires_grad_()
    lr = R.distribution_focal_loss(zr, y, reduction="none")
    (gr,) = torch.autograd.grad(lr.sum(), zr)
    dr = R.distribution_integral(zr)
    (gir,) = torch.autograd.grad(dr.sum(), zr)
    for a, b in ((loss, lr), (g, gr), (d, dr), (gi, gir)):
        assert torch.isfinite(a).all()
        assert_close_dtype(a.cpu(), b.detach(), torch.float64)


@pytest.mark.cuda
def test_cuda_misaligned_rows_and_determinism():
    base = torch.randn(1 + 5000 * 16, device="cuda")
    z = base[1:].view(5000, 16)  # rows not 16-byte aligned: the scalar path
    y = (torch.rand(5000) * 15).cuda()
    ref = R.distribution_focal_loss(z.double().cpu(), y.double().cpu(), reduction="sum")
    a = DF.distribution_focal_loss(z, y, reduction="sum")
    assert_close_dtype(a, ref, torch.float32)
    assert all(torch.equal(a, DF.distribution_focal_loss(z, y, reduction="sum")) for _ in range(3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 300, 4, 16), (3, 1000, 4, 8), (1, 7, 4, 17), (2, 1, 4, 16),
                                   (5, 2, 32)])
def test_integral_reads_the_bin_major_layout_in_place(dtype, shape):
    """ultralytics' [B, 4·R, A] box output permuted to [B, A, 4·R] and viewed [B, A, 4, R]
    (bins A apart, rows along A): the CPU integral reads it without a copy and writes its
    gradient in that layout, so the head's gradient needs no transpose; values and gradients
    bit for bit those of the contiguous copy."""
    *lead, R = shape
    leaf = torch.randn(lead[0], int(torch.tensor(lead[2:]).prod()) * R, lead[1]).to(dtype)
    leaf.requires_grad_()
    view = leaf.permute(0, 2, 1)
    if len(shape) == 4:
        view = view.view(shape)
    assert not view.is_contiguous() or shape[1] == 1  # (one anchor: contiguous after all)
    out = DF.distribution_integral(view)
    copy = view.detach().contiguous().requires_grad_()
    ref = DF.distribution_integral(copy)
    assert torch.equal(out, ref)
    up = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, leaf, up)
    (gr,) = torch.autograd.grad(ref, copy, up)
    assert g.is_contiguous()  # the head's own layout: the permute's backward is a view
    assert torch.equal(g.permute(0, 2, 1).reshape(gr.shape), gr)


def test_integral_other_strided_layouts_still_correct():
    """Layouts the bin-major path does not take (a slice with gaps, more than 32 bins, bins
    contiguous) give the contiguous copy's results."""
    z = torch.randn(3, 48, 10, dtype=torch.float64)
    for view in (z.permute(0, 2, 1)[:, ::2], z.permute(0, 2, 1), z[:, :40].permute(0, 2, 1)):
        out = DF.distribution_integral(view)
        torch.testing.assert_close(out, R.distribution_integral(view.contiguous()), rtol=1e-12,
                                   atol=1e-12)


def test_integral_bin_major_opcheck_and_compile():
    """The fake kernel gives the gradient the strides the CPU kernel gives it (pred's, for a
    bin-major pred): opcheck compares them, and torch.compile plans buffers from them."""
    leaf = torch.randn(2, 64, 30, dtype=torch.float64, requires_grad=True)
    view = leaf.permute(0, 2, 1).view(2, 30, 4, 16)
    out, stats = torch.ops.detloss.dfl_integral(view)
    torch.library.opcheck(torch.ops.detloss.dfl_integral_backward,
                          (torch.randn_like(out), view.detach(), stats),
                          test_utils=("test_schema", "test_faketensor"))

    def step(x):
        return DF.distribution_integral(x.permute(0, 2, 1).view(2, 30, 4, 16)).square().sum()

    (want,) = torch.autograd.grad(step(leaf), leaf)
    (got,) = torch.autograd.grad(torch.compile(step, fullgraph=True)(leaf), leaf)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("driver", drivers())
def test_backward_op_reads_the_upstream_gradient_as_it_is(driver):
    """dfl_backward scales by the upstream gradient in its own strides and dtype (one
    multiply): checking it copies nothing (it was made contiguous, and cast, only to be
    checked), and a bad one is still an error naming it."""
    with on_driver(driver) as (device, ns):
        ops = getattr(torch.ops, ns)
        z = torch.randn(5, 10, 16, device=device)
        y = torch.rand(5, 10, device=device) * 15
        _, stats = ops.dfl_loss(z, y, None, "none")
        up = torch.rand(10, 5, dtype=torch.float64, device=device).t()  # strided, another dtype
        with OpSpy() as spy:
            g = ops.dfl_backward(up, z, y, stats, None, "none")
        assert "aten::clone" not in spy.ops and "aten::contiguous" not in spy.ops, spy.ops
        assert spy.ops.count("aten::_to_copy") == 1, spy.ops  # the multiply's cast, once
        ones = ops.dfl_backward(torch.ones(5, 10, device=device), z, y, stats, None, "none")
        torch.testing.assert_close(g, ones * up.float().unsqueeze(-1), rtol=1e-6, atol=0)
        with pytest.raises(ValueError, match=r"grad of shape \[5, 9\] is not broadcastable to "
                                             r"the loss shape \[5, 10\]"):
            ops.dfl_backward(torch.ones(5, 9, device=device), z, y, stats, None, "none")
        with pytest.raises(ValueError, match="grad of a reduced loss must be 0-dim"):
            ops.dfl_backward(torch.ones(5, 10, device=device), z, y, stats, None, "mean")


# ------------------------------------------------------------------ the distillation KL (DDF)
def _kl_reference(z, u, temperature):
    """torch's chain (D-FINE's DDF): kl_div(log_softmax(z/T), softmax(u/T)).sum(-1)·T²."""
    return F.kl_div(F.log_softmax(z / temperature, dim=-1), F.softmax(u / temperature, dim=-1),
                    reduction="none").sum(-1) * temperature ** 2


@pytest.mark.parametrize("bins", [2, 17, 33, 1024])
@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_distribution_kl_against_float64(bins, temperature):
    """Rows far from and close to their teacher (distillation's case: the KL a small difference
    of terms ~log R): the value and the gradient (a different weight per row) against torch's
    chain in float64; float32 to a few ulp of the value (the row is computed in double, so
    closer than torch's own float32 chain, also checked), half and bfloat16 rounded once."""
    g = torch.Generator().manual_seed(bins)
    z = torch.randn(4, 75, bins, generator=g, dtype=torch.float64) * 4
    u = torch.cat([torch.randn(4, 40, bins, generator=g, dtype=torch.float64) * 4,
                   z[:, 40:] + torch.randn(4, 35, bins, generator=g, dtype=torch.float64) * 0.05], 1)
    w = torch.rand(4, 75, generator=g, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        zd, ud = z.to(dtype), u.to(dtype)
        z64 = zd.double().requires_grad_()
        want = _kl_reference(z64, ud.double(), temperature)
        (gw,) = torch.autograd.grad((want * w).sum(), z64)
        zg = zd.clone().requires_grad_()
        got = DF.distribution_kl_loss(zg, ud, temperature)
        (gg,) = torch.autograd.grad((got * w.to(dtype)).sum(), zg)
        assert got.shape == (4, 75) and got.dtype == dtype and gg.dtype == dtype
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(gg, gw, rtol=1e-12, atol=1e-13)
        elif dtype == torch.float32:
            own = (_kl_reference(zd, ud, temperature).double() - want).abs().max().item()
            err = (got.double() - want).abs().max().item()
            assert err <= 4 * F32_EPS * want.abs().max().item() and err <= own + 1e-12, (err, own)
            torch.testing.assert_close(gg.double(), gw, rtol=1e-5, atol=1e-6 * gw.abs().max().item())
        else:  # the float result rounded to the dtype (within one of its ulps)
            torch.testing.assert_close(got, want.to(dtype), rtol=torch.finfo(dtype).eps,
                                       atol=torch.finfo(dtype).eps * want.abs().max().item())


def test_distribution_kl_registration_and_errors():
    """gradcheck and opcheck; a teacher of another dtype is cast to pred's; errors name the
    argument: a teacher that requires grad, shapes that differ, a temperature <= 0."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(5, 3, 9, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: DF.distribution_kl_loss(x, u, 2.0), (z,))
    torch.library.opcheck(torch.ops.detloss.dfl_kl.default, (z, u, 2.0))
    torch.library.opcheck(torch.ops.detloss.dfl_kl.default, (z.detach().float(), u.float(), 5.0))
    torch.testing.assert_close(DF.distribution_kl_loss(z.detach(), u.float(), 2.0),
                               DF.distribution_kl_loss(z.detach(), u.float().double(), 2.0))
    assert DF.distribution_kl_loss(torch.zeros(0, 9), torch.zeros(0, 9), 5.0).shape == (0,)
    with pytest.raises(RuntimeError, match="teacher requires grad, but the distillation KL has no "
                       "gradient with respect to its teacher; pass teacher.detach()"):
        DF.distribution_kl_loss(z, u.clone().requires_grad_(), 2.0)
    with pytest.raises(ValueError, match=r"detloss.dfl_kl: teacher \(the teacher's bin logits\) "
                       r"must have pred's shape \[5, 3, 9\], got \[5, 3, 8\]"):
        DF.distribution_kl_loss(z, u[..., :8], 2.0)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        DF.distribution_kl_loss(z, u, 0.0)
    with pytest.raises(TypeError, match="temperature must be a number"):
        DF.distribution_kl_loss(z, u, "5")
