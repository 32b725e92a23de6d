"""The classification family at the edges: saturated logits, long sums, accuracy in ulp,
finite gradient limits, empty and NaN inputs, deterministic reductions, every CPU
capability; and the CUDA-marked cases (run where a GPU is)."""
import math
import os
import subprocess
import sys

import pytest
import torch

import detloss_cuda
import detloss_cuda.functional as DF
import detloss_cuda.reference as R
from conftest import DTYPES, HAS_CUDA, assert_close_dtype, devices, on_driver
from cls_cases import KINDS, check_parity, loss, targets


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
