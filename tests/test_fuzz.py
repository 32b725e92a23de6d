"""Generated inputs (issue 15): hypothesis draws shapes (0- and 1-sized dims, 1-D to 4-D,
broadcast operands), layouts (non-contiguous, expanded, offset storage), dtypes, values
(NaN, +-inf, +-100 logits, degenerate and huge boxes, targets at 0, 1 and between, labels
outside [0, C)) and every reduction, and checks each public loss against reference.py:

* finite inputs give finite outputs and gradients, within the dtype's tolerance of the
  float64 reference (gradients where the reference's autograd is finite: README, Numerics);
* a NaN operand gives NaN exactly in the elements it feeds ('none'), and never a crash.

The CI profile (default) runs a bounded number of examples per test, derandomised, so a run
is reproducible; a longer search is
    DETLOSS_FUZZ=long python -m pytest -q tests/test_fuzz.py
(25x the examples; any failure prints the smallest input hypothesis found).
"""
import os

import torch
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import detloss_cuda.functional as DF  # noqa: E402
import detloss_cuda.reference as R  # noqa: E402
from detloss_cuda.verify import ARITH, TOL, tolerance  # noqa: E402

settings.register_profile("ci", max_examples=1000, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=25000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("DETLOSS_FUZZ", "ci")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SPECIALS = [float("nan"), float("inf"), -float("inf"), 100.0, -100.0, 0.0]


def _fill(draw, shape, scale, specials=(), lo=None, hi=None):
    """A float64 tensor: seeded normal (or uniform in [lo, hi]) values, some replaced by
    specials at drawn positions."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if lo is None:
        t = torch.randn(shape, dtype=torch.float64, generator=g) * scale
    else:
        t = torch.rand(shape, dtype=torch.float64, generator=g) * (hi - lo) + lo
    n = t.numel()
    if n and specials and draw(st.booleans()):
        flat = t.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, n - 1))] = draw(st.sampled_from(specials))
    return t


def _layout(draw, t):
    """The same values as `t`, in a drawn layout: contiguous, a strided view into a larger
    buffer (offset storage, non-contiguous), or a transposed copy viewed back."""
    how = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if how == "strided" and t.dim() >= 1:
        big = torch.empty((*t.shape[:-1], 2 * t.shape[-1] + 1), dtype=t.dtype)
        big[..., 1::2] = t
        return big[..., 1::2]
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t


def _lead(draw, max_dims=3):
    return tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=max_dims)))


def _compare(out, ref, dtype, nan_where, ops, msg, unit=0.0, extra_atol=0.0):
    """`out` (computed in `dtype`) against the float64 `ref`: NaN where `nan_where`, finite
    and close elsewhere. `unit`: the size of the terms the result is a difference of (a box
    loss is 1 - metric: its rounding error is relative to 1, not to the loss)."""
    out64 = out.detach().double()
    if nan_where is not None:
        assert torch.isnan(out64[nan_where]).all(), f"{msg}: a NaN operand lost its NaN"
        keep = ~nan_where
        out64, ref = out64[keep], ref[keep]
    exp = ref.detach().to(dtype).double()  # rounded to the output dtype (fp16 sums may be inf)
    fin = torch.isfinite(exp)
    assert torch.isfinite(out64[fin]).all(), f"{msg}: non-finite output for finite input"
    rtol, atol = tolerance(torch.cat([exp[fin], exp.new_tensor([unit])]), dtype, ops)
    # below the smallest normal number (softplus(-100) = 3.7e-44) the dtype's spacing is fixed
    atol = max(atol, torch.finfo(dtype).tiny) + extra_atol
    torch.testing.assert_close(out64[fin], exp[fin], rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


# ------------------------------------------------------------------------ classification
@st.composite
def cls_case(draw):
    kind = draw(st.sampled_from(["bce", "focal", "qfl", "vfl"]))
    dtype = draw(st.sampled_from(DTYPES))
    lead, C = _lead(draw), draw(st.integers(1, 6))
    index = draw(st.booleans())
    x = _fill(draw, (*lead, C), draw(st.sampled_from([0.5, 3.0, 30.0])), SPECIALS)
    kw = dict(reduction=draw(st.sampled_from(["none", "mean", "sum"])),
              label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1])))
    if kind in ("focal", "qfl", "vfl"):
        kw["gamma"] = draw(st.sampled_from([0.0, 0.5, 1.5, 2.0]))
    if kind == "focal":
        kw["alpha"] = draw(st.sampled_from([0.25, -1.0]))
    if kind == "qfl":
        kw["alpha"] = draw(st.sampled_from([None, 0.25]))
    if kind == "vfl":
        kw["alpha"] = draw(st.sampled_from([0.75, 0.0]))
    if index:
        t = torch.tensor(draw(st.lists(st.sampled_from([-100, -1, 0, C - 1, C, C + 3]
                                                       + list(range(C))),
                                       min_size=len(torch.empty(lead).view(-1)),
                                       max_size=len(torch.empty(lead).view(-1)))),
                         dtype=draw(st.sampled_from([torch.int64, torch.int32]))).view(lead)
        if kind != "bce" and draw(st.booleans()):
            kw["score"] = _fill(draw, lead, 0, lo=0.0, hi=1.0)
    else:
        t = _fill(draw, (*lead, C), 0, [0.0, 1.0, 0.5], lo=0.0, hi=1.0)
        if draw(st.booleans()):
            t = torch.where(t > 0.6, t, torch.zeros(()))  # sparse positives, as detectors have
        if kind == "vfl" and draw(st.booleans()):
            kw["label"] = t > 0.3
    wshape = draw(st.sampled_from([None, "C", "anchor", "full", "scalar"]))
    if wshape is not None:
        shape = {"C": (C,), "anchor": (*lead, 1), "full": (*lead, C), "scalar": ()}[wshape]
        w = _fill(draw, shape, 0, lo=0.0, hi=2.0)
        kw["weight"] = w.expand(*lead, C) if draw(st.booleans()) and wshape != "full" else w
    if kind == "bce" and draw(st.booleans()):
        kw["pos_weight"] = _fill(draw, (C,), 0, lo=0.5, hi=3.0)
    return kind, dtype, x, t, kw, draw


_CLS = {"bce": (DF.binary_cross_entropy_with_logits, R.binary_cross_entropy_with_logits),
        "focal": (DF.sigmoid_focal_loss, R.sigmoid_focal_loss),
        "qfl": (DF.quality_focal_loss, R.quality_focal_loss),
        "vfl": (DF.varifocal_loss, R.varifocal_loss)}


@settings(settings.get_profile(PROFILE))
@given(cls_case())
def test_classification_against_the_reference(case):
    kind, dtype, x64, t64, kw, draw = case
    fused, ref = _CLS[kind]
    msg = f"{kind} {dtype} x{tuple(x64.shape)} t{tuple(t64.shape)} {kw}"
    x = _layout(draw, x64.to(dtype)).requires_grad_()
    t = _layout(draw, t64 if not t64.is_floating_point() else t64.to(dtype))
    conv = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "score"
                else v) for k, v in kw.items()}
    out = fused(x, t, **conv)
    # the reference on the very values the kernel read (rounded to dtype), in float64
    xr = x.detach().double().requires_grad_()
    # (score is passed in float64 and read in the input's dtype, as a dense target would be)
    refkw = {k: (v.to(dtype).double() if isinstance(v, torch.Tensor) and v.is_floating_point()
                 else v) for k, v in conv.items()}
    expected = ref(xr, t.double() if t.is_floating_point() else t, **refkw)
    # a NaN logit feeds its own loss element, unless its anchor is ignored (index form)
    nan_in = torch.isnan(xr.detach())
    if not t.is_floating_point():
        nan_in = nan_in & (t != kw.get("ignore_index", -100)).unsqueeze(-1)
    if kw["reduction"] != "none":
        if nan_in.any():
            assert torch.isnan(out), f"{msg}: a NaN logit lost in the reduction"
            return
        nan_where = None
    else:
        nan_where = nan_in
    # |x| > 80 in float32 arithmetic: sigmoid(-|x|) < 2^-115 and its powers (the focusing
    # factors) lose digits to subnormal rounding (p = 3.7e-44 at x = -100 is exact to 3%;
    # p^0.5 to 1%); such elements are checked for finiteness, not closeness. float64 keeps
    # its digits to |x| = 700.
    sat = (xr.detach().abs() > 80) if dtype != torch.float64 else torch.zeros_like(nan_in)
    if kw["reduction"] == "none":
        assert torch.isfinite(out.detach()[sat & torch.isfinite(xr.detach())]).all(), msg
        _compare(out.detach()[~sat], expected[~sat], dtype, nan_in[~sat], 1, msg)
    else:
        # each saturated element's loss is off by at most ~|x|·(2^-149)^gamma: 1e-21 at gamma 0.5
        _compare(out, expected, dtype, None, 1, msg, extra_atol=1e-21 * int(sat.sum()))
    if out.numel() == 0 or not torch.isfinite(x64).all():
        return
    (g,) = torch.autograd.grad(out.sum(), x)
    (gr,) = torch.autograd.grad(expected.sum(), xr)
    fin = torch.isfinite(gr)
    assert torch.isfinite(g).all(), f"{msg}: non-finite gradient for finite input"
    rtol, atol = tolerance(gr[fin], dtype)
    atol = max(atol, 2 * _ulp1(dtype), torch.finfo(dtype).tiny)
    bound = rtol * gr.abs() + atol
    if kind == "qfl":
        # |t - p|^gamma near t = p: p carries the compute type's rounding (eps), so
        # |t - p|^(gamma - 1) in the gradient carries |gamma - 1|·eps/|t - p| relative error
        tt = R._dense(xr.detach(), t, refkw.get("score"), kw.get("ignore_index", -100))[0]
        tt = tt.double() if isinstance(tt, torch.Tensor) else torch.full_like(xr, tt)
        eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
        gap = (tt - torch.sigmoid(xr.detach())).abs().clamp(min=1e-300)
        bound = bound + 4 * eps * (abs(kw["gamma"] - 1) + kw["gamma"]) / gap * gr.abs()
    bound[sat] = float("inf")  # finite (checked above), not compared
    err = (g.double() - gr.to(dtype).double()).abs()
    assert (err[fin] <= bound[fin]).all(), (
        f"{msg} grad: max excess {(err - bound)[fin].max():.3g}\n{g}\n{gr}")


def _ulp1(dtype):
    """The output dtype's spacing at 1: gradients are rounded to it."""
    return torch.finfo(dtype).eps


# ------------------------------------------------------------------------------- boxes
@st.composite
def box_case(draw):
    kind = draw(st.sampled_from(["iou", "giou", "diou", "ciou"]))
    fmt = draw(st.sampled_from(["xyxy", "xyxy", "xywh"]))
    dtype = draw(st.sampled_from(DTYPES))
    lead = _lead(draw)
    # broadcast partners: each leading dim of target is kept or set to 1
    tlead = tuple(d if draw(st.booleans()) else 1 for d in lead)
    scale = draw(st.sampled_from([10.0, 1e3]))

    def boxes(shape):
        xy = _fill(draw, (*shape, 2), 0, lo=0.0, hi=scale)
        wh = _fill(draw, (*shape, 2), 0, [0.0], lo=0.0, hi=scale / 3)  # some zero-size
        if fmt == "xywh":
            return torch.cat([xy + wh / 2, wh], -1)
        return torch.cat([xy, xy + wh], -1)

    p, t = boxes(lead), boxes(tlead)
    if draw(st.booleans()) and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = float("nan")
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    return kind, fmt, dtype, p, t, reduction, draw


@settings(settings.get_profile(PROFILE))
@given(box_case())
def test_boxes_against_the_reference(case):
    kind, fmt, dtype, p64, t64, reduction, draw = case
    msg = f"{kind} {fmt} {dtype} p{tuple(p64.shape)} t{tuple(t64.shape)} {reduction}"
    p = _layout(draw, p64.to(dtype)).requires_grad_()
    t = _layout(draw, t64.to(dtype))
    out = DF.iou_loss(p, t, kind, fmt, reduction=reduction)
    pr = p.detach().double().requires_grad_()
    expected = R.iou_loss(pr, t.detach().double(), kind, fmt, reduction=reduction)
    nan_pair = torch.isnan(pr.detach()).any(-1) | torch.isnan(t.detach().double()).any(-1)
    nan_pair = nan_pair.expand(torch.broadcast_shapes(p.shape[:-1], t.shape[:-1]))
    if reduction != "none":
        if nan_pair.any():
            assert torch.isnan(out), msg
            return
        nan_pair = None
    # ~40 operations a box: five times the arithmetic budget of a classification formula
    pairs = torch.broadcast_shapes(p.shape[:-1], t.shape[:-1]).numel()
    _compare(out, expected, dtype, nan_pair, 5, msg, unit=pairs if reduction == "sum" else 1.0)
    if out.numel() == 0 or (nan_pair is not None and nan_pair.any()) or fmt == "xywh":
        return  # xywh: corners formed in float32 may order near-equal edges differently
    (g,) = torch.autograd.grad(out.sum(), p)
    (gr,) = torch.autograd.grad(expected.sum(), pr)
    assert torch.isfinite(g).all(), f"{msg}: non-finite gradient"
    # The gradient is a sum of terms that cancel (at identical boxes, to ~0), each of the size
    # of _grad_unit: its float32 error is relative to that size, not to the sum.
    rtol, atol_rel, _ = TOL[dtype]
    rtol, atol_rel = rtol + 4 * ARITH[dtype][0], atol_rel + 4 * ARITH[dtype][1]
    unit = _grad_unit(pr.detach(), t.detach().double()).sum_to_size(p.shape[:-1]).unsqueeze(-1)
    err = (g.double() - gr.to(dtype).double()).abs()
    bound = rtol * gr.abs() + atol_rel * unit + 4 * _ulp1(dtype)
    fin = torch.isfinite(gr)
    assert (err[fin] <= bound[fin]).all(), (
        f"{msg} grad: max excess {(err - bound)[fin].max():.3g}\n{g}\n{gr}")


def _grad_unit(p, t, eps=1e-7):
    """Per pair, an upper bound of the size of the terms a box gradient sums: the IoU's
    h/union, GIoU's and DIoU's penalties (bounded by (W + H)/union of the enclosing box
    W x H), CIoU's aspect term (~2/(w + h) of each box)."""
    W = torch.maximum(p[..., 2], t[..., 2]) - torch.minimum(p[..., 0], t[..., 0])
    H = torch.maximum(p[..., 3], t[..., 3]) - torch.minimum(p[..., 1], t[..., 1])
    wp, hp = (p[..., 2] - p[..., 0]).clamp(min=0), (p[..., 3] - p[..., 1]).clamp(min=0)
    wt, ht = (t[..., 2] - t[..., 0]).clamp(min=0), (t[..., 3] - t[..., 1]).clamp(min=0)
    iw = (torch.minimum(p[..., 2], t[..., 2]) - torch.maximum(p[..., 0], t[..., 0])).clamp(min=0)
    ih = (torch.minimum(p[..., 3], t[..., 3]) - torch.maximum(p[..., 1], t[..., 1])).clamp(min=0)
    union = wp * hp + wt * ht - iw * ih
    return torch.maximum((W + H) / (union + eps),
                         torch.maximum(2 / (wp + hp + eps), 2 / (wt + ht + eps)))


# --------------------------------------------------------------------------------- DFL
@st.composite
def dfl_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    lead, R_ = _lead(draw), draw(st.integers(2, 20))
    z = _fill(draw, (*lead, R_), draw(st.sampled_from([1.0, 5.0, 30.0])), [100.0, -100.0])
    y = _fill(draw, lead, 0, [0.0, R_ - 1.0, -3.0, R_ + 2.0, float("nan")], lo=0.0, hi=R_ - 1.0)
    w = _fill(draw, lead, 0, lo=0.0, hi=2.0) if draw(st.booleans()) else None
    return dtype, z, y, w, draw(st.sampled_from(["none", "mean", "sum"])), draw


@settings(settings.get_profile(PROFILE))
@given(dfl_case())
def test_dfl_against_the_reference(case):
    dtype, z64, y, w, reduction, draw = case
    msg = f"dfl {dtype} z{tuple(z64.shape)} {reduction} w={w is not None}"
    z = _layout(draw, z64.to(dtype)).requires_grad_()
    out = DF.distribution_focal_loss(z, y, reduction, None if w is None else w.to(dtype))
    zr = z.detach().double().requires_grad_()
    expected = R.distribution_focal_loss(zr, y, reduction, None if w is None else w.to(dtype).double())
    nan_row = torch.isnan(y)
    if reduction != "none":
        if nan_row.any():
            assert torch.isnan(out), msg
            return
        nan_row = None
    # -log softmax(z)_l = lse(z) - z_l: a difference of terms of the logits' size
    zmax = float(z64.detach().abs().max()) if z64.numel() else 0.0
    _compare(out, expected, dtype, nan_row, 2, msg,
             unit=zmax * (z64.shape[:-1].numel() if reduction == "sum" else 1))
    if out.numel() == 0 or torch.isnan(y).any():
        return
    (g,) = torch.autograd.grad(out.sum(), z)
    (gr,) = torch.autograd.grad(expected.sum(), zr)
    assert torch.isfinite(g).all(), msg
    rtol, atol = tolerance(gr, dtype, 2)
    torch.testing.assert_close(g.double(), gr.to(dtype).double(), rtol=rtol,
                               atol=max(atol, 2 * _ulp1(dtype)), msg=lambda m: f"{msg} grad\n{m}")


# ------------------------------------------------------- the forward-only and integral ops
@st.composite
def matrix_case(draw):
    kind = draw(st.sampled_from(["iou", "giou", "diou", "ciou"]))
    dtype = draw(st.sampled_from(DTYPES + [torch.int32]))
    batch = tuple(draw(st.lists(st.integers(0, 3), max_size=1)))
    n, m = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    scale = 100.0 if dtype == torch.int32 else draw(st.sampled_from([10.0, 1e3]))

    def boxes(k):
        xy = _fill(draw, (*batch, k, 2), 0, lo=0.0, hi=scale)
        wh = _fill(draw, (*batch, k, 2), 0, [0.0], lo=0.0, hi=scale / 3)
        return torch.cat([xy, xy + wh], -1)

    return kind, dtype, boxes(n), boxes(m)


@settings(settings.get_profile(PROFILE))
@given(matrix_case())
def test_box_iou_matrix_against_the_reference(case):
    kind, dtype, a64, b64 = case
    a, b = a64.to(dtype), b64.to(dtype)
    out = DF.box_iou_matrix(a, b, kind)
    out_dtype = torch.float32 if dtype == torch.int32 else dtype
    assert out.dtype == out_dtype and out.shape == (*a.shape[:-1], b.shape[-2])
    expected = R.box_iou_matrix(a.double(), b.double(), kind)
    _compare(out, expected, out_dtype, None, 5, f"matrix {kind} {dtype} {tuple(a.shape)}", unit=1.0)


@st.composite
def integral_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    lead, bins = _lead(draw), draw(st.integers(2, 20))
    return dtype, _fill(draw, (*lead, bins), draw(st.sampled_from([1.0, 5.0, 30.0])),
                        [100.0, -100.0, float("nan")]), draw


@settings(settings.get_profile(PROFILE))
@given(integral_case())
def test_distribution_integral_against_the_reference(case):
    dtype, z64, draw = case
    z = _layout(draw, z64.to(dtype)).requires_grad_()
    out = DF.distribution_integral(z)
    zr = z.detach().double().requires_grad_()
    expected = R.distribution_integral(zr)
    nan_row = torch.isnan(zr.detach()).any(-1)
    # the expectation of a bin index: terms of the size of the last bin's index
    _compare(out, expected, dtype, nan_row, 2, f"integral {dtype} {tuple(z.shape)}",
             unit=z.shape[-1] - 1)
    if out.numel() == 0 or nan_row.any():
        return
    (g,) = torch.autograd.grad(out.sum(), z)
    (gr,) = torch.autograd.grad(expected.sum(), zr)
    assert torch.isfinite(g).all()
    rtol, atol = tolerance(torch.cat([gr.reshape(-1), gr.new_tensor([z.shape[-1] - 1.0])]), dtype, 2)
    torch.testing.assert_close(g.double(), gr.to(dtype).double(), rtol=rtol,
                               atol=max(atol, 2 * _ulp1(dtype)))


# ------------------------------------------------------------------------- the mask loss
@st.composite
def mask_case(draw):
    """Positives in a few images, boxes with NaN, infinite, integer and fractional edges, areas
    of 0 (ultralytics' 0/0), NaN and inf; either ground-truth form. Logits finite: a NaN outside
    every box does not reach the fused loss, which never reads those pixels (ultralytics' crop
    multiplies it by 0: NaN; docs/numerics.md)."""
    dtype = draw(st.sampled_from(DTYPES))
    P, nm, B = draw(st.integers(0, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    coef = _fill(draw, (P, nm), draw(st.sampled_from([0.5, 2.0])))
    proto = _fill(draw, (B, nm, H, W), 1.0)
    edges = [float("nan"), float("inf"), -float("inf"), 0.0, 1.0, 2.5, float(W), -1.0]
    boxes = _fill(draw, (P, 4), 0, edges, lo=-2.0, hi=max(H, W) + 2.0)
    area = _fill(draw, (P,), 0, [0.0, float("nan"), float("inf")], lo=0.01, hi=1.0)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    bi = torch.randint(0, B, (P,), generator=g)
    overlap = draw(st.booleans())
    if overlap:
        masks = torch.randint(0, 3, (B, H, W), generator=g)
        mi = torch.randint(0, 2, (P,), generator=g)
    else:
        masks = torch.rand(4, H, W, generator=g, dtype=torch.float64)  # soft targets too
        mi = torch.randint(0, 4, (P,), generator=g)
    return dtype, coef, proto, bi, boxes, area, masks, mi, overlap, draw(
        st.sampled_from(["none", "mean", "sum"]))


@settings(settings.get_profile(PROFILE))
@given(mask_case())
def test_prototype_mask_loss_against_the_reference(case):
    dtype, coef, proto, bi, boxes, area, masks, mi, overlap, reduction = case
    msg = f"mask {dtype} coef{tuple(coef.shape)} proto{tuple(proto.shape)} {overlap} {reduction}"
    c = coef.to(dtype).requires_grad_()
    p = proto.to(dtype).requires_grad_()
    out = DF.prototype_mask_loss(c, p, bi, boxes, area, masks, mi, overlap, reduction)
    cr = c.detach().double().requires_grad_()
    pr = p.detach().double().requires_grad_()
    ref = R.prototype_mask_loss(cr, pr, bi, boxes, area, masks, mi, overlap, reduction)
    assert out.shape == ref.shape and out.dtype == dtype, msg
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(out.detach()), nan), f"{msg}: NaN pattern"
    # a logit is a dot of nm products, a loss a sum over a box: relative to the largest term
    _compare(out, ref, dtype, None if not nan.any() else nan, 3, msg)
    if out.numel() == 0:
        return
    up = torch.linspace(0.5, 2.0, out.numel()).view(out.shape).double()
    grads = torch.autograd.grad(out, (c, p), up.to(dtype))
    refs = torch.autograd.grad(ref, (cr, pr), up)
    for name, a, e in zip(("coef", "proto"), grads, refs):
        nan = torch.isnan(e)
        assert torch.equal(torch.isnan(a), nan), f"{msg}: {name} grad NaN pattern"
        rtol, atol = tolerance(e[~nan], dtype, 3)
        torch.testing.assert_close(a[~nan].double(), e[~nan].to(dtype).double(), rtol=rtol,
                                   atol=max(atol, 2 * _ulp1(dtype)),
                                   msg=lambda m: f"{msg} grad {name}\n{m}")
