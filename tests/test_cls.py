"""The classification family (bce, focal, qfl, vfl): values and gradients against the
pure-PyTorch reference, numerics at the edges, registration (gradcheck, opcheck,
torch.compile), argument errors and the nn drop-ins."""
import math
import os
import subprocess
import sys

import pytest
import torch

import detloss_cuda
import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R
from conftest import DTYPES, HAS_CUDA, assert_close_dtype, devices, on_driver

KINDS = ["bce", "focal", "qfl", "vfl"]
NAMES = {
    "bce": "binary_cross_entropy_with_logits",
    "focal": "sigmoid_focal_loss",
    "qfl": "quality_focal_loss",
    "vfl": "varifocal_loss",
}
DEFAULT_PARAMS = {
    "bce": {},
    "focal": dict(alpha=0.25, gamma=2.0),
    "qfl": dict(alpha=None, gamma=2.0),
    "vfl": dict(alpha=0.75, gamma=2.0),
}


def loss(module, kind, x, t, reduction="mean", weight=None, **params):
    fn = getattr(module, NAMES[kind])
    kw = dict(DEFAULT_PARAMS[kind])
    kw.update(params)
    return fn(x, t, reduction=reduction, weight=weight, **kw)


def targets(shape, kind, dtype=torch.float64):
    """Detector-like targets: mostly 0, some soft (IoU-like) scores, some exact 1s."""
    u = torch.rand(shape, dtype=torch.float64)
    soft = torch.rand(shape, dtype=torch.float64)
    t = torch.where(u < 0.15, soft, torch.zeros_like(u))
    t = torch.where(u > 0.97, torch.ones_like(u), t)
    if kind in ("bce", "focal") and t.numel():
        t = torch.where(u < 0.05, (u * 20).round().clamp(0, 1), t)
    return t.to(dtype)


def check_parity(kind, shape, dtype, device, reduction, weight=None, scale=3.0, x64=None,
                 t64=None, g64=None, **params):
    x64 = torch.randn(shape, dtype=torch.float64) * scale if x64 is None else x64
    t64 = targets(shape, kind) if t64 is None else t64
    x = x64.to(dtype).to(device).requires_grad_()
    t = t64.to(dtype).to(device)
    xr = x.detach().double().cpu().requires_grad_()
    tr = t.double().cpu()
    w = None if weight is None else weight.to(dtype).to(device)
    wr = None if weight is None else w.double().cpu()

    out = loss(DF, kind, x, t, reduction, w, **params)
    ref = loss(R, kind, xr, tr, reduction, wr, **params)
    assert out.dtype == dtype and out.device.type == device
    assert out.shape == ref.shape
    msg = f"{kind} {tuple(shape)} {dtype} {device} {reduction} {params}"
    assert_close_dtype(out, ref, dtype, "value " + msg)

    if g64 is None:
        g64 = torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.ones(())
    g = g64.to(dtype)
    (gx,) = torch.autograd.grad(out, x, g.to(device))
    (gr,) = torch.autograd.grad(ref, xr, g.double())
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close_dtype(gx, gr, dtype, "grad " + msg)
    return out, gx


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (8400, 80), (0, 80), (2, 3, 5, 7)], ids=str)
def test_parity(kind, dtype, device, reduction, shape):
    check_parity(kind, shape, dtype, device, reduction)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["focal", "qfl", "vfl"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_parity_gamma_alpha(kind, gamma, alpha, device):
    if kind == "vfl" and alpha is None:
        alpha = 0.75
    check_parity(kind, (61, 17), torch.float64, device, "none", gamma=gamma, alpha=alpha)
    check_parity(kind, (61, 17), torch.float32, device, "sum", gamma=gamma, alpha=alpha)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous(kind, device):
    x64 = torch.randn(80, 37, dtype=torch.float64).t()  # (37, 80), transposed strides
    t64 = targets((80, 37), kind).t()
    assert not x64.is_contiguous()
    check_parity(kind, x64.shape, torch.float32, device, "none", x64=x64, t64=t64)
    x = x64[:, ::3]  # a strided slice
    check_parity(kind, x.shape, torch.float32, device, "mean", x64=x, t64=t64[:, ::3])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "wshape",
    [(), (1,), (80,), (1, 80), (24, 1), (24, 80), (4, 1, 1), (4, 1, 80), (4, 24, 1), (4, 24, 80)],
    ids=str)
def test_weight_broadcast(kind, wshape, device):
    shape = (4, 24, 80)
    w = torch.rand(wshape, dtype=torch.float64) + 0.5
    check_parity(kind, shape, torch.float32, device, "none", weight=w)
    check_parity(kind, shape, torch.float64, device, "sum", weight=w)


@pytest.mark.parametrize("device", devices())
def test_weight_non_contiguous_and_holes(device):
    # (4, 1, 80) expanded over the middle dim has a broadcast hole: the op copies it once;
    # a transposed full weight is read through a copy too. Both must still be exact.
    shape = (4, 24, 80)
    w = (torch.rand(80, 24, 4, dtype=torch.float64) + 0.5).permute(2, 1, 0)
    check_parity("focal", shape, torch.float64, device, "none", weight=w)
    w2 = torch.rand(4, 1, 80, dtype=torch.float64).expand(4, 24, 80)
    check_parity("qfl", shape, torch.float64, device, "none", weight=w2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pshape", [(1,), (80,), (33, 80)], ids=str)
def test_pos_weight(kind, pshape, device):
    x = (torch.randn(33, 80, dtype=torch.float64) * 3).to(device).requires_grad_()
    t = targets((33, 80), kind).to(device)
    pw = (torch.rand(pshape, dtype=torch.float64) * 3 + 0.1).to(device)
    xr = x.detach().cpu().requires_grad_()
    kw = dict(DEFAULT_PARAMS[kind])
    if kind == "bce":
        out = DF.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="sum")
        ref = R.binary_cross_entropy_with_logits(xr, t.cpu(), pos_weight=pw.cpu(), reduction="sum")
        # and the oracle itself against torch's own BCE
        torch.testing.assert_close(ref, torch.nn.functional.binary_cross_entropy_with_logits(
            xr, t.cpu(), pos_weight=pw.cpu(), reduction="sum"))
    else:
        # pos_weight reaches focal/qfl/vfl through the nn modules' loss_fcn
        out = DF._cls_loss(x, t, kind, pos_weight=pw, reduction="sum", **kw)
        ref = getattr(R, NAMES[kind])(xr, t.cpu(), pos_weight=pw.cpu(), reduction="sum", **kw)
    assert_close_dtype(out, ref, torch.float64)
    (gx,) = torch.autograd.grad(out, x)
    (gr,) = torch.autograd.grad(ref, xr)
    assert_close_dtype(gx, gr, torch.float64)


def test_reference_bce_matches_torch():
    x = torch.randn(300, 7, dtype=torch.float64) * 5
    t = torch.rand(300, 7, dtype=torch.float64)
    w = torch.rand(7, dtype=torch.float64)
    for red in ("none", "mean", "sum"):
        torch.testing.assert_close(
            R.binary_cross_entropy_with_logits(x, t, weight=w, reduction=red),
            torch.nn.functional.binary_cross_entropy_with_logits(x, t, weight=w, reduction=red))


@pytest.mark.parametrize("device", devices())
def test_vfl_label(device):
    shape = (50, 20)
    x64 = torch.randn(shape, dtype=torch.float64) * 3
    t64 = targets(shape, "vfl")
    label = torch.rand(shape) < 0.2  # positives that disagree with t > 0 on purpose
    x = x64.to(device).requires_grad_()
    xr = x64.clone().requires_grad_()
    for lab in (label, label.long(), label.float()):  # bool, or 0/1 numbers (ultralytics)
        out = DF.varifocal_loss(x, t64.to(device), label=lab.to(device), reduction="none")
        ref = R.varifocal_loss(xr, t64, label=label, reduction="none")
        assert_close_dtype(out, ref, torch.float64)
        g = torch.randn(shape, dtype=torch.float64)
        (gx,) = torch.autograd.grad(out, x, g.to(device))
        (gr,) = torch.autograd.grad(ref, xr, g)
        assert_close_dtype(gx, gr, torch.float64)
    # default positives are t > 0
    a = DF.varifocal_loss(x, t64.to(device), reduction="sum")
    b = DF.varifocal_loss(x, t64.to(device), label=(t64 > 0).to(device), reduction="sum")
    assert torch.equal(a, b)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_expanded_upstream_grad(kind, device):
    # loss.sum().backward() hands the 'none' op an expanded (stride 0) gradient
    x = torch.randn(40, 30, dtype=torch.float64, device=device, requires_grad=True)
    t = targets((40, 30), kind).to(device)
    xr = x.detach().cpu().requires_grad_()
    (3.0 * loss(DF, kind, x, t, "none")).sum().backward()
    (3.0 * loss(R, kind, xr, t.cpu(), "none")).sum().backward()
    assert_close_dtype(x.grad, xr.grad, torch.float64)
    # and a broadcast upstream gradient (per column), as x.grad of loss * v with v of [30]
    x.grad = None
    xr.grad = None
    v = torch.randn(30, dtype=torch.float64)
    (loss(DF, kind, x, t, "none") * v.to(device)).sum().backward()
    (loss(R, kind, xr, t.cpu(), "none") * v).sum().backward()
    assert_close_dtype(x.grad, xr.grad, torch.float64)


# ------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.5, 2.0])
def test_saturated_logits_stay_finite(kind, dtype, device, gamma):
    xs = torch.tensor([-100.0, -30.0, -17.0, 0.0, 17.0, 30.0, 100.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0, 0.3, 0.5], dtype=torch.float64)
    x64 = xs.repeat_interleave(len(ts))
    t64 = ts.repeat(len(xs))
    x = x64.to(dtype).to(device).requires_grad_()
    t = t64.to(dtype).to(device)
    params = {} if kind == "bce" else dict(gamma=gamma)
    out = loss(DF, kind, x, t, "none", **params)
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(gx).all(), (out, gx)
    # values agree with the float64 reference wherever that is finite
    ref = loss(R, kind, x.detach().double().cpu(), t.double().cpu(), "none", **params)
    assert_close_dtype(out, ref, dtype)
    # the saturated BCE is the logit itself: 100 for x = 100, t = 0
    if kind == "bce":
        assert out[x64.eq(100) & t64.eq(0)].double().item() == pytest.approx(100.0, rel=1e-3)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", ["focal", "bce"])
def test_fp32_sum_keeps_small_terms(kind, device):
    # RetinaNet at initialisation: logits near -4.6 (p = 0.01), 1% positives. The easy
    # negatives' focal losses (~1e-6) sit beside O(1) positives; a long float32 running sum
    # drops them (it came out 4e-6 low, 30 ulps). The fused sum must stay within a few ulps
    # of the float64 sum of the same per-element values.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400_000, generator=g) - 4.6
    t = torch.zeros(400_000)
    t[::100] = 1
    f = DF.sigmoid_focal_loss if kind == "focal" else DF.binary_cross_entropy_with_logits
    ref = R.sigmoid_focal_loss if kind == "focal" else R.binary_cross_entropy_with_logits
    want = ref(x.double(), t.double(), reduction="none").sum()
    got = f(x.to(device), t.to(device), reduction="sum").double().cpu()
    assert abs(got - want) <= 4 * torch.finfo(torch.float32).eps * want, (got, want)


@pytest.mark.slow
@pytest.mark.parametrize("kind,driver", [("focal", "emulated")] + (
    [pytest.param(k, "cuda", marks=pytest.mark.cuda) for k in ("focal", "bce")] if HAS_CUDA else []))
def test_cuda_fp32_sum_of_1e8_keeps_small_terms(kind, driver):
    """1e8 elements: each CUDA thread adds ~400 units (a float running sum there dropped the
    easy negatives' terms); compensated per thread, double across threads and blocks: within
    the CPU's tolerance of the float64 sum of the same per-element values. On a GPU, and in
    every CI run under the emulator (14 s)."""
    with on_driver(driver) as (device, _):
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(100_000_000, generator=g, device=device) - 4.6
        t = torch.zeros_like(x)
        t[::100] = 1
        f = DF.sigmoid_focal_loss if kind == "focal" else DF.binary_cross_entropy_with_logits
        want = f(x, t, reduction="none").double().sum()  # the same values, summed in float64
        got = f(x, t, reduction="sum").double()
    assert abs(got - want) <= 4 * torch.finfo(torch.float32).eps * want, (got, want)


@pytest.mark.parametrize("device", devices())
def test_fp32_bce_is_accurate_to_a_few_ulp(device):
    """Over a dense sweep of logits, the fp32 loss (and, for hard targets, its gradient) is
    within 8 ulp (2^-24 each) of the exact value, small losses included: the two-term form
    avoids the cancellation of (1 - t)·x + softplus(-x) (which returns 0 for x = -30, t = 0)."""
    x = torch.linspace(-30, 30, 200_001, dtype=torch.float64).float()
    for tv in (0.0, 1.0, 0.3):
        t = torch.full_like(x, tv)
        xf = x.to(device).requires_grad_()
        out = DF.binary_cross_entropy_with_logits(xf, t.to(device), reduction="none")
        xr = x.double().requires_grad_()
        ref = R.binary_cross_entropy_with_logits(xr, t.double(), reduction="none")
        rel = (out.detach().double().cpu() - ref).abs() / ref.abs()
        assert rel.max().item() < 8 * 2**-24, (tv, rel.max().item())
        (g,) = torch.autograd.grad(out.sum(), xf)
        (gr,) = torch.autograd.grad(ref.sum(), xr)
        if tv in (0.0, 1.0):  # soft targets: p - t cancels where the gradient crosses 0
            grel = (g.double().cpu() - gr).abs() / gr.abs()
            assert grel.max().item() < 8 * 2**-24, (tv, grel.max().item())


@pytest.mark.parametrize("device", devices())
def test_gradient_limits_are_zero_not_nan(device):
    # focal with gamma < 1 at p_t = 1, and qfl at t = p: autograd of the reference gives
    # NaN (inf * 0); the fused backward gives the finite limit 0 of the modulating term.
    x = torch.tensor([60.0, -60.0, 0.0], dtype=torch.float64, device=device, requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64, device=device)
    for kind in ("focal", "qfl"):
        out = loss(DF, kind, x, t, "sum", gamma=0.5)
        (g,) = torch.autograd.grad(out, x)
        assert torch.isfinite(g).all()
    # qfl at t = p = 0.5 exactly: only the ce term contributes
    out = DF.quality_focal_loss(x[2:], t[2:], gamma=0.5, reduction="sum")
    (g,) = torch.autograd.grad(out, x)
    assert g[2].item() == 0.0  # dce/dx = p - t = 0 and m = |t - p|^gamma = 0


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_focal_gamma0_no_alpha_is_bce(dtype, device):
    x = (torch.randn(300, 80) * 4).to(dtype).to(device).requires_grad_()
    t = targets((300, 80), "focal").to(dtype).to(device)
    a = DF.sigmoid_focal_loss(x, t, alpha=None, gamma=0.0, reduction="none")
    b = DF.binary_cross_entropy_with_logits(x, t, reduction="none")
    c = torch.nn.functional.binary_cross_entropy_with_logits(x.float(), t.float(), reduction="none")
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same arithmetic, bit for bit
    assert_close_dtype(b, c.double(), dtype if dtype != torch.float64 else torch.float32)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    a = DF.sigmoid_focal_loss(x, t, alpha=-1, gamma=0.0, reduction="mean")
    b = DF.binary_cross_entropy_with_logits(x, t, reduction="mean")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_empty_mean_is_zero_with_grad_path(kind, device):
    x = torch.randn(0, 80, device=device, requires_grad=True)
    t = torch.rand(0, 80, device=device)
    for red in ("mean", "sum"):
        out = loss(DF, kind, x, t, red)
        assert out.shape == () and out.item() == 0.0 and out.requires_grad
        out.backward()
        assert x.grad.shape == (0, 80)
    out = loss(DF, kind, x, t, "none")
    assert out.shape == (0, 80)


def test_nan_input_propagates():
    x = torch.tensor([float("nan"), 1.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    for kind in KINDS:
        out = loss(DF, kind, x, t, "none")
        assert math.isnan(out[0].item()) and math.isfinite(out[1].item())


@pytest.mark.parametrize("device", devices())
def test_reduction_is_deterministic(device):
    x = torch.randn(1_000_003, device=device) * 3
    t = torch.rand(1_000_003, device=device)
    first = DF.sigmoid_focal_loss(x, t, reduction="sum")
    for _ in range(3):
        assert torch.equal(DF.sigmoid_focal_loss(x, t, reduction="sum"), first)
    if device == "cpu":  # independent of the thread count, too
        n = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert torch.equal(DF.sigmoid_focal_loss(x, t, reduction="sum"), first)
        finally:
            torch.set_num_threads(n)


CAPABILITY_SCRIPT = r"""
import torch, detloss_cuda, detloss_cuda.functional as DF, detloss_cuda.reference as R
info = detloss_cuda.build_info()
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    x = (torch.randn(1003, 37, dtype=torch.float64) * 3).to(dtype)
    t = torch.rand(1003, 37, dtype=torch.float64).to(dtype)
    w = torch.rand(37, dtype=torch.float64).to(dtype)
    for fn in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss",
               "quality_focal_loss", "varifocal_loss"):
        xf = x.clone().requires_grad_()
        xr = x.double().requires_grad_()
        a = getattr(DF, fn)(xf, t, weight=w, reduction="none")
        b = getattr(R, fn)(xr, t.double(), weight=w.double(), reduction="none")
        g = torch.randn(a.shape, dtype=torch.float64).to(dtype)
        ga, = torch.autograd.grad(a, xf, g)
        gb, = torch.autograd.grad(b, xr, g.double())
        tol = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 2e-3,
               torch.bfloat16: 1.6e-2}[dtype]
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)
        torch.testing.assert_close(ga.double(), gb, rtol=tol, atol=tol)
print(info["cpu_capability"])
"""


# Only our op and tensor creation: torch's own kernels die of SIGILL when ATEN_CPU_CAPABILITY
# forces a capability the CPU lacks, ours fall back to the best the CPU has.
FALLBACK_SCRIPT = r"""
import torch, detloss_cuda, detloss_cuda.functional as DF
g = torch.Generator().manual_seed(0)
x = torch.randn(1003, 37, generator=g)
t = torch.rand(1003, 37, generator=g)
print(repr(DF.sigmoid_focal_loss(x, t, reduction="sum").item()))
print(detloss_cuda.build_info()["cpu_capability"])
"""

_ORDER = ["DEFAULT", "AVX2", "AVX512"]


def _cpu_runs():
    """The capabilities this CPU executes (from /proc/cpuinfo; None where unknown)."""
    if not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo") as f:
        flags = {w for line in f if line.startswith("flags") for w in line.split()}
    avx2 = {"avx2", "fma", "f16c"}
    return ["DEFAULT"] + (["AVX2"] if avx2 <= flags else []) + (
        ["AVX512"] if avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else [])


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_every_cpu_capability(cap):
    """Each compiled capability (selected as ATen selects its own) is exact, not only the
    one this machine picks by default; one the CPU lacks falls back instead of crashing."""
    compiled = detloss_cuda.build_info()["cpu_capabilities"].split(",")
    if cap.upper() not in compiled:
        pytest.skip(f"{cap} not compiled on this platform ({compiled})")
    runs = _cpu_runs()
    env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
    if runs is not None and cap.upper() not in runs:
        r = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (r.returncode, r.stderr[-3000:])  # was -4 (SIGILL)
        value, used = r.stdout.split()[-2:]
        best = [c for c in runs if _ORDER.index(c) <= _ORDER.index(cap.upper())][-1]
        assert used == best, (cap, used, best)
        g = torch.Generator().manual_seed(0)
        x, t = torch.randn(1003, 37, generator=g), torch.rand(1003, 37, generator=g)
        expect = DF.sigmoid_focal_loss(x, t, reduction="sum").item()
        assert abs(float(value) - expect) <= 1e-5 * abs(expect), (value, expect)
        return
    r = subprocess.run([sys.executable, "-c", CAPABILITY_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    used = r.stdout.strip().splitlines()[-1]
    assert used == cap.upper(), (cap, used)


# ------------------------------------------------------------------- registration checks
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck(kind, reduction):
    x = (torch.randn(9, 5, dtype=torch.float64) * 2).requires_grad_()
    t = targets((9, 5), kind)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    pw = torch.rand(5, dtype=torch.float64) * 2 + 0.5
    for gamma in (0.5, 2.0):
        def f(x):
            return torch.ops.detloss.cls_loss(x, t, w, pw, None, kind, 0.25, gamma, reduction)

        assert torch.autograd.gradcheck(f, (x,))


def _opcheck_cases():
    x = torch.randn(6, 5) * 2
    t = torch.rand(6, 5)
    w = torch.rand(5)
    lab = torch.rand(6, 5) > 0.5
    for kind in KINDS:
        for red in ("none", "mean", "sum"):
            yield (x.clone().requires_grad_(), t, w, None, None, kind, 0.25, 1.5, red)
        alpha = 0.75 if kind == "vfl" else -1.0
        yield (x.clone().requires_grad_(), t, None, w + 0.5, None, kind, alpha, 2.0, "sum")
    yield (x.clone().requires_grad_(), t, None, None, lab, "vfl", 0.75, 2.0, "mean")
    yield (x.clone().double().requires_grad_(), t.double(), None, None, None, "focal", 0.25, 2.0,
           "none")


@pytest.mark.parametrize("args", list(_opcheck_cases()),
                         ids=lambda a: f"{a[5]}-{a[8]}-{a[0].dtype}")
def test_opcheck_cls_loss(args):
    torch.library.opcheck(torch.ops.detloss.cls_loss.default, args)


def test_opcheck_cls_backward():
    x = torch.randn(6, 5)
    t = torch.rand(6, 5)
    for kind in KINDS:
        torch.library.opcheck(torch.ops.detloss.cls_backward.default,
                              (torch.randn(6, 5), x, t, None, None, None, kind, 0.25, 2.0, "none"))
        torch.library.opcheck(torch.ops.detloss.cls_backward.default,
                              (torch.tensor(2.0), x, t, None, None, None, kind, 0.25, 2.0, "mean"))


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 80))
    crit = DN.FocalLoss(torch.nn.BCEWithLogitsLoss(reduction="sum"), gamma=1.5, alpha=0.25)

    def step(x, t):
        return crit(model(x), t)

    x = torch.randn(64, 16)
    t = targets((64, 80), "focal", torch.float32)
    compiled = torch.compile(step, fullgraph=True)
    out_c = compiled(x, t)
    grads_c = torch.autograd.grad(out_c, list(model.parameters()))
    out_e = step(x, t)
    grads_e = torch.autograd.grad(out_e, list(model.parameters()))
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------ autocast
@pytest.mark.parametrize("device", devices())
def test_autocast_runs_in_float32(device):
    x = torch.randn(64, 80, device=device)
    t = targets((64, 80), "focal", torch.float32).to(device)
    low = torch.bfloat16
    with torch.autocast(device_type=device, dtype=low):
        out = DF.sigmoid_focal_loss(x.to(low), t, reduction="sum")
        ref_torch = torch.nn.functional.binary_cross_entropy_with_logits(x.to(low), t)
    assert out.dtype == torch.float32 and ref_torch.dtype == torch.float32
    expected = R.sigmoid_focal_loss(x.to(low).double(), t.double(), reduction="sum")
    assert_close_dtype(out, expected, torch.float32)


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    x = torch.randn(4, 3)
    t = torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"reduction must be one of 'none', 'mean', 'sum'"):
        DF.sigmoid_focal_loss(x, t, reduction="avg")
    with pytest.raises(ValueError, match=r"target of shape \[4, 2\] must have the shape of input \[4, 3\]"):
        DF.binary_cross_entropy_with_logits(x, torch.rand(4, 2))
    with pytest.raises(TypeError, match="input must be a floating tensor"):
        DF.sigmoid_focal_loss(torch.ones(4, 3, dtype=torch.long), t)
    with pytest.raises(ValueError, match="a dense 0/1 target must be a floating tensor"):
        DF.sigmoid_focal_loss(x, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="target must be floating .* or int32/int64"):
        DF.sigmoid_focal_loss(x, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        DF.sigmoid_focal_loss([1.0], t)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        DF.sigmoid_focal_loss(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        DF.quality_focal_loss(x, t, gamma=float("nan"))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        DF.sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        DF.varifocal_loss(x, t, alpha=-0.5)
    with pytest.raises(ValueError, match=r"weight of shape \[5\] is not broadcastable to the loss shape \[4, 3\]"):
        DF.sigmoid_focal_loss(x, t, weight=torch.rand(5))
    with pytest.raises(ValueError, match=r"weight of shape \[2, 4, 3\] is not broadcastable"):
        DF.binary_cross_entropy_with_logits(x, t, weight=torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match=r"pos_weight of shape \[2\] is not broadcastable"):
        DF.binary_cross_entropy_with_logits(x, t, pos_weight=torch.rand(2))
    with pytest.raises(TypeError, match="weight must be a floating tensor"):
        DF.binary_cross_entropy_with_logits(x, t, weight=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="label is only used by kind='vfl'"):
        torch.ops.detloss.cls_loss(x, t, None, None, t > 0, "focal", 0.25, 2.0, "mean")
    with pytest.raises(TypeError, match="label must be a bool tensor"):
        torch.ops.detloss.cls_loss(x, t, None, None, t, "vfl", 0.75, 2.0, "mean")
    with pytest.raises(ValueError, match="kind must be one of 'bce', 'focal', 'qfl', 'vfl'"):
        torch.ops.detloss.cls_loss(x, t, None, None, None, "ce", 0.25, 2.0, "mean")


def test_target_requiring_grad_is_an_error():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.rand(4, 3, requires_grad=True)
    for kind in KINDS:
        with pytest.raises(RuntimeError, match="target requires grad.*target.detach"):
            loss(DF, kind, x, t)
        loss(DF, kind, x, t.detach()).backward()  # the documented remedy
    with pytest.raises(RuntimeError, match="weight requires grad"):
        DF.sigmoid_focal_loss(x, t.detach(), weight=torch.rand(3, requires_grad=True))
    with torch.no_grad():  # no autograd, no error
        loss(DF, "focal", x, t)


def test_double_backward_is_a_clear_error():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 3, dtype=torch.float64)
    out = DF.sigmoid_focal_loss(x, t, reduction="sum")
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through cls_loss is not supported"):
        g.sum().backward()


@pytest.mark.cuda
def test_mixed_devices_error():
    x = torch.randn(4, 3, device="cuda")
    with pytest.raises((ValueError, RuntimeError), match="device"):
        DF.sigmoid_focal_loss(x, torch.rand(4, 3))
    with pytest.raises((ValueError, RuntimeError), match="device"):
        DF.sigmoid_focal_loss(x, torch.rand(4, 3, device="cuda"), weight=torch.rand(3))


# ------------------------------------------------------------------------------ nn drop-ins
class YoloV5FocalLoss(torch.nn.Module):
    """YOLOv5's utils/loss.py FocalLoss, as users have it today (the seed's class shape)."""

    def __init__(self, loss_fcn, gamma=1.5, alpha=0.25):
        super().__init__()
        self.loss_fcn, self.gamma, self.alpha = loss_fcn, gamma, alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"

    def forward(self, pred, true):
        loss = self.loss_fcn(pred, true)
        pred_prob = torch.sigmoid(pred)
        p_t = true * pred_prob + (1 - true) * (1 - pred_prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


class YoloV5QFocalLoss(YoloV5FocalLoss):
    def forward(self, pred, true):
        loss = self.loss_fcn(pred, true)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * torch.abs(true - torch.sigmoid(pred)) ** self.gamma
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("pair", [(DN.FocalLoss, YoloV5FocalLoss), (DN.QFocalLoss, YoloV5QFocalLoss)],
                         ids=["focal", "qfocal"])
def test_nn_drop_in_matches_yolov5(pair, reduction):
    ours_cls, theirs_cls = pair
    pw = torch.rand(80, dtype=torch.float64) + 0.5
    w = torch.rand(80, dtype=torch.float64) + 0.5

    def bce():
        return torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction=reduction)

    ours, theirs = ours_cls(bce(), gamma=1.5, alpha=0.25), theirs_cls(bce(), gamma=1.5, alpha=0.25)
    assert ours.reduction == reduction and ours.loss_fcn.reduction == "none"
    x = torch.randn(200, 80, dtype=torch.float64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    t = targets((200, 80), "qfl")
    a, b = ours(x, t), theirs(xr, t)
    assert_close_dtype(a, b, torch.float64)
    g = torch.randn(a.shape, dtype=torch.float64)
    a.backward(g)
    b.backward(g)
    assert_close_dtype(x.grad, xr.grad, torch.float64)


def test_nn_modules_defaults_and_aliases():
    assert DN.QFocalLoss is DN.QualityFocalLoss and DN.VarifocalLoss is DN.VariFocalLoss
    f = DN.FocalLoss()
    assert (f.gamma, f.alpha, f.reduction) == (1.5, 0.25, "mean")
    v = DN.VariFocalLoss()
    assert (v.gamma, v.alpha) == (1.5, 0.75)
    x = torch.randn(30, 8, dtype=torch.float64)
    t = targets((30, 8), "vfl")
    lab = torch.rand(30, 8) > 0.8
    assert_close_dtype(v(x, t, lab), R.varifocal_loss(x, t, lab, alpha=0.75, gamma=1.5),
                       torch.float64)
    q = DN.QualityFocalLoss(alpha=None, gamma=2.0)
    assert_close_dtype(q(x, t), R.quality_focal_loss(x, t, gamma=2.0), torch.float64)
    with pytest.raises(TypeError, match="loss_fcn must be an nn.BCEWithLogitsLoss"):
        DN.FocalLoss(torch.nn.MSELoss())


def test_nn_bce_is_torch_bce():
    w = torch.rand(80)
    pw = torch.rand(80) + 0.5
    ours = DN.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    theirs = torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    assert isinstance(ours, torch.nn.BCEWithLogitsLoss)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(500, 80, requires_grad=True)
    t = targets((500, 80), "bce", torch.float32)
    assert_close_dtype(ours(x, t), theirs(x.double(), t.double()), torch.float32)


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cuda_matches_cpu(kind, dtype, reduction):
    shape = (8400, 80)
    x64 = torch.randn(shape, dtype=torch.float64) * 3
    t64 = targets(shape, kind)
    w = torch.rand(80, dtype=torch.float64) + 0.5
    g64 = torch.randn(shape, dtype=torch.float64) if reduction == "none" else None
    kw = dict(weight=w, x64=x64, t64=t64, g64=g64)
    out_c, g_c = check_parity(kind, shape, dtype, "cuda", reduction, **kw)
    out_h, g_h = check_parity(kind, shape, dtype, "cpu", reduction, **kw)
    # both devices evaluate the same formula in the same opmath; they differ only in libm
    # ulps and in the order of the reduction
    assert_close_dtype(out_c, out_h.double(), dtype)
    assert_close_dtype(g_c, g_h.double(), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("n", [1, 5, 4099, 1 << 20, (1 << 20) * 3 + 7])
def test_cuda_misaligned_and_odd_sizes(kind, offset, n):
    # storage offsets break 16-byte alignment: the kernel must take its scalar path
    base = torch.randn(n + offset, dtype=torch.float64) * 3
    x64 = base[offset:]
    t64 = targets((n + offset,), kind)[offset:]
    check_parity(kind, (n,), torch.float32, "cuda", "none", x64=x64, t64=t64)
    check_parity(kind, (n,), torch.float16, "cuda", "sum", x64=x64, t64=t64)


@pytest.mark.cuda
def test_cuda_large_grid_stride_and_determinism():
    n = 1024 * 256 * 4 * 3 + 5  # more units than one pass of the capped grid
    x = torch.randn(n, device="cuda") * 3
    t = torch.rand(n, device="cuda")
    a = DF.quality_focal_loss(x, t, reduction="sum")
    assert all(torch.equal(a, DF.quality_focal_loss(x, t, reduction="sum")) for _ in range(5))
    ref = R.quality_focal_loss(x.double(), t.double(), reduction="sum")
    assert_close_dtype(a, ref, torch.float32)


@pytest.mark.cuda
def test_cuda_runs_on_current_stream_and_device():
    s = torch.cuda.Stream()
    x = torch.randn(1 << 20, device="cuda")
    t = torch.rand(1 << 20, device="cuda")
    with torch.cuda.stream(s):
        out = DF.sigmoid_focal_loss(x, t, reduction="sum")
    s.synchronize()
    ref = DF.sigmoid_focal_loss(x, t, reduction="sum")
    assert torch.equal(out, ref)
