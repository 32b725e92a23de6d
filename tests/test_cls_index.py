"""Classification losses with class-index targets (and a per-anchor score), ignore_index,
label smoothing, and the gradient computed in the forward: against the dense form (the
one-hot, times score, target), the reference, gradcheck, opcheck and torch.compile."""
import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R
from conftest import DTYPES, OpSpy, assert_close_dtype, devices, drivers, on_driver

KINDS = ["bce", "focal", "qfl", "vfl"]
NAMES = {"bce": "binary_cross_entropy_with_logits", "focal": "sigmoid_focal_loss",
         "qfl": "quality_focal_loss", "vfl": "varifocal_loss"}
PARAMS = {"bce": {}, "focal": dict(alpha=0.25, gamma=2.0), "qfl": dict(gamma=2.0),
          "vfl": dict(alpha=0.75, gamma=2.0)}


def call(module, kind, x, t, reduction="mean", **kw):
    p = dict(PARAMS[kind])
    p.update(kw)
    return getattr(module, NAMES[kind])(x, t, reduction=reduction, **p)


def labels_for(shape, C, gen=None, ignore=-100, extra=True):
    """Mostly background (C and -1, as mmdet and apex mark it), some classes, some ignored."""
    g = torch.Generator().manual_seed(1) if gen is None else gen
    u = torch.rand(shape, generator=g)
    lab = torch.randint(0, max(C, 1), shape, generator=g)
    lab = torch.where(u < 0.5, torch.full_like(lab, C), lab)
    if extra:
        lab = torch.where((u > 0.6) & (u < 0.7), torch.full_like(lab, -1), lab)
        lab = torch.where((u > 0.7) & (u < 0.78), torch.full_like(lab, ignore), lab)
    return lab


def one_hot(lab, C, score, dtype):
    oh = (lab.unsqueeze(-1) == torch.arange(C)).to(dtype)
    return oh * (1 if score is None else score.unsqueeze(-1).to(dtype))


# ----------------------------------------------------------------- index form == dense form
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_score", [False, True])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32], ids=str)
def test_index_equals_dense_one_hot(kind, dtype, device, with_score, label_dtype):
    """No ignored anchors: the index form is the dense form with the one-hot (x score)
    target, values and gradients."""
    B, A, C = 2, 37, 19  # C not a multiple of any vector width: rows end mid-vector
    lab = labels_for((B, A), C, extra=False)
    lab[0, :3] = torch.tensor([0, C - 1, C])
    lab[1, 5] = -1
    score = torch.rand(B, A) if with_score else None
    x = (torch.randn(B, A, C) * 3).to(dtype).to(device)
    dense_t = one_hot(lab, C, score, dtype).to(device)
    idx = lab.to(label_dtype).to(device)
    sc = None if score is None else score.to(dtype).to(device)
    dense_kw = {}
    if kind == "vfl":  # positives: the labelled classes, whatever their score
        dense_kw["label"] = (lab.unsqueeze(-1) == torch.arange(C)).to(device)
    for reduction in ("none", "sum", "mean"):
        xi = x.clone().requires_grad_()
        xd = x.clone().requires_grad_()
        li = call(DF, kind, xi, idx, reduction, score=sc)
        ld = call(DF, kind, xd, dense_t, reduction, **dense_kw)
        g = torch.randn(li.shape).to(dtype).to(device) if reduction == "none" else None
        (gi,) = torch.autograd.grad(li, xi, g)
        (gd,) = torch.autograd.grad(ld, xd, g)
        assert li.dtype == dtype and li.shape == ld.shape
        # the same formula per element; the compiler may fuse a multiply-add differently in
        # the two loops (-ffp-contract), so "equal" is to the last bit or two
        assert_close_dtype(li, ld.double(), dtype, f"{kind} {reduction}")
        assert_close_dtype(gi, gd.double(), dtype, f"grad {kind} {reduction}")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_with_ignore_against_reference(kind, dtype, device, reduction):
    """Labels C, -1 (background) and ignore_index among real classes, 3-D [B, A, C]."""
    B, A, C = 3, 41, 80
    lab = labels_for((B, A), C, ignore=-7)
    score = torch.rand(B, A, dtype=torch.float64)
    x64 = torch.randn(B, A, C, dtype=torch.float64) * 3
    x = x64.to(dtype).to(device).requires_grad_()
    xr = x.detach().double().cpu().requires_grad_()
    kw = dict(score=score.to(dtype).to(device), ignore_index=-7)
    out = call(DF, kind, x, lab.to(device), reduction, **kw)
    ref = call(R, kind, xr, lab, reduction, score=score.to(dtype).double(), ignore_index=-7)
    assert_close_dtype(out, ref, dtype, f"value {kind} {reduction}")
    g = torch.randn(ref.shape, dtype=torch.float64) if reduction == "none" else torch.ones(())
    (gx,) = torch.autograd.grad(out, x, g.to(dtype).to(device))
    (gr,) = torch.autograd.grad(ref, xr, g.to(dtype).double())
    assert_close_dtype(gx, gr, dtype, f"grad {kind} {reduction}")
    ignored = (lab == -7).to(device)
    assert (gx[ignored] == 0).all()  # no gradient for an ignored anchor
    if reduction == "none":
        assert (out[ignored] == 0).all()


@pytest.mark.parametrize("device", devices())
def test_index_mean_counts_only_kept_anchors(device):
    x = torch.randn(10, 6, dtype=torch.float64, device=device, requires_grad=True)
    lab = torch.tensor([0, 1, -100, 6, -100, 2, 3, -1, -100, 5], device=device)
    out = DF.sigmoid_focal_loss(x, lab, reduction="mean")
    full = DF.sigmoid_focal_loss(x, lab, reduction="none")
    torch.testing.assert_close(out, full.sum() / (7 * 6), rtol=1e-12, atol=0)
    # all ignored: the mean of nothing is 0, with zero gradient
    every = torch.full((10,), -100, device=device)
    out = DF.sigmoid_focal_loss(x, every, reduction="mean")
    assert out.item() == 0
    (g,) = torch.autograd.grad(out, x)
    assert (g == 0).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_label_equal_to_c_reads_nothing_out_of_bounds(kind, device):
    """apex's kernel reads the next anchor's logit when a label equals C. Here the logits are
    a view whose next elements hold NaN: any read past a row (or the tensor) would show."""
    A, C = 33, 8
    buf = torch.full((A * C + 4 * C,), float("nan"), device=device)
    x = buf[: A * C].view(A, C)
    x.copy_(torch.randn(A, C))
    x.requires_grad_()
    lab = torch.full((A,), C, device=device)
    lab[::3] = torch.arange(0, A, 3, device=device) % C
    out = call(DF, kind, x, lab, "sum")
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all()
    # a row of logits of which only its own are read: the last anchor labelled C
    x2 = buf[: 2 * C].view(2, C)
    lab2 = torch.tensor([C, C], device=device)
    assert torch.isfinite(call(DF, kind, x2, lab2, "none")).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_index_empty_non_contiguous_and_small_c(kind, device):
    # empty
    x = torch.randn(0, 80, device=device, requires_grad=True)
    out = call(DF, kind, x, torch.zeros(0, dtype=torch.long, device=device), "mean")
    assert out.item() == 0
    out.backward()
    # non-contiguous logits and labels, C smaller than a vector (rows inside one vector)
    for C in (1, 3, 80):
        x64 = torch.randn(50, C, dtype=torch.float64).t().contiguous().t()  # column-major
        lab = labels_for((100,), C)[::2]
        x = x64.float().to(device).requires_grad_()
        xr = x64.clone().requires_grad_()
        out = call(DF, kind, x, lab.to(device), "sum")
        ref = call(R, kind, xr, lab, "sum")
        assert_close_dtype(out, ref, torch.float32, f"C={C}")
        (g,) = torch.autograd.grad(out, x)
        (gr,) = torch.autograd.grad(ref, xr)
        assert_close_dtype(g, gr, torch.float32, f"grad C={C}")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_weight_and_pos_weight_broadcast_over_index_targets(kind, device):
    B, A, C = 2, 30, 12
    lab = labels_for((B, A), C)
    x64 = torch.randn(B, A, C, dtype=torch.float64)
    w = torch.rand(B, A, 1, dtype=torch.float64) + 0.5  # per anchor
    pw = torch.rand(C, dtype=torch.float64) + 0.5       # per class
    x = x64.to(device).requires_grad_()
    xr = x64.clone().requires_grad_()
    fn, fr = getattr(DF, NAMES[kind]), getattr(R, NAMES[kind])
    kw = dict(PARAMS[kind], reduction="sum", weight=w.to(device))
    if kind == "bce":
        out = fn(x, lab.to(device), pos_weight=pw.to(device), **kw)
        ref = fr(xr, lab, pos_weight=pw, **dict(kw, weight=w))
    else:
        out = fn(x, lab.to(device), **kw)
        ref = fr(xr, lab, **dict(kw, weight=w))
    assert_close_dtype(out, ref, torch.float64)
    assert_close_dtype(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, xr)[0], torch.float64)


# ----------------------------------------------------------------- label smoothing
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["dense", "index"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_label_smoothing_against_reference(kind, form, dtype, device):
    A, C = 64, 10
    lab = labels_for((A,), C)
    score = torch.rand(A, dtype=torch.float64)
    t = lab if form == "index" else one_hot(lab.clamp(max=C), C, score, torch.float64)
    kw = dict(score=score.to(dtype)) if form == "index" else {}
    x64 = torch.randn(A, C, dtype=torch.float64) * 3
    x = x64.to(dtype).to(device).requires_grad_()
    xr = x.detach().double().cpu().requires_grad_()
    td = t.to(device) if form == "index" else t.to(dtype).to(device)
    out = call(DF, kind, x, td, "sum", label_smoothing=0.1,
               **{k: v.to(device) for k, v in kw.items()})
    ref = call(R, kind, xr, t if form == "index" else t.to(dtype).double(), "sum",
               label_smoothing=0.1, **{k: v.double() for k, v in kw.items()})
    assert_close_dtype(out, ref, dtype, f"{kind} {form}")
    assert_close_dtype(torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, xr)[0], dtype,
                       f"grad {kind} {form}")


def test_bce_smoothing_is_yolov5_smooth_bce():
    """YOLOv5: cp, cn = smooth_BCE(eps) = 1 - eps/2, eps/2 as the BCE's targets."""
    x = torch.randn(100, 80, dtype=torch.float64)
    t = (torch.rand(100, 80) < 0.1).double()
    eps = 0.1
    cp, cn = 1.0 - 0.5 * eps, 0.5 * eps
    ts = torch.where(t > 0, torch.tensor(cp, dtype=torch.float64), torch.tensor(cn, dtype=torch.float64))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(x, ts)
    out = DF.binary_cross_entropy_with_logits(x, t, label_smoothing=eps)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)


def test_focal_smoothing_keeps_the_unsmoothed_modulating_factor():
    """apex's definition: the focusing factor and alpha_t see t, only the BCE sees ts."""
    x = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    s, a, gm = 0.2, 0.25, 2.0
    p = torch.sigmoid(x)
    ts = t * (1 - s) + s / 2
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, ts, reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    expect = ce * (t * a + (1 - t) * (1 - a)) * (1 - pt) ** gm
    out = DF.sigmoid_focal_loss(x, t, alpha=a, gamma=gm, label_smoothing=s)
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=0)


# ----------------------------------------------------------------- gradient in the forward
@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("form", ["dense", "index"])
def test_inference_computes_no_gradient(form, driver):
    with on_driver(driver) as (device, ns):
        x = torch.randn(40, 7, device=device)
        t = labels_for((40,), 7).to(device) if form == "index" else torch.rand(40, 7, device=device)
        for ctx, xx in ((torch.no_grad(), x.clone().requires_grad_()), (torch.enable_grad(), x)):
            with ctx, OpSpy() as spy:
                DF.sigmoid_focal_loss(xx, t, reduction="sum")
            assert f"{ns}::cls_loss" in spy.ops and f"{ns}::cls_loss_with_grad" not in spy.ops, spy.ops


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_forward_computes_the_gradient_backward_only_scales(reduction, driver):
    """One mul_ in the backward, or for a reduced loss on the CUDA drivers the scale kernel
    (no aten op; tests/test_grad_in_forward.py counts its launches); upstream exactly 1: no
    pass on the CPU, none that touches the gradient on the CUDA drivers."""
    with on_driver(driver) as (device, ns):
        x = torch.randn(40, 7, device=device, requires_grad=True)
        t = torch.rand(40, 7, device=device)
        with OpSpy() as fwd:
            out = DF.sigmoid_focal_loss(x, t, reduction=reduction)
        assert f"{ns}::cls_loss_with_grad" in fwd.ops, fwd.ops
        with OpSpy() as bwd:
            out.backward(torch.ones_like(out) * 2 if reduction == "none" else torch.tensor(2.0, device=device))
        assert not any(o.startswith(f"{ns}::") for o in bwd.ops), bwd.ops  # no kernel re-run
        kernel_scale = driver != "cpu" and reduction != "none"
        assert bwd.ops.count("aten::mul_") == (0 if kernel_scale else 1), bwd.ops
        twice = x.grad.clone()
        if reduction != "none":  # upstream exactly 1
            x.grad = None
            out = DF.sigmoid_focal_loss(x, t, reduction=reduction)
            with OpSpy() as bwd:
                out.backward()
            assert "aten::mul_" not in bwd.ops and "aten::mul" not in bwd.ops, bwd.ops
            assert torch.equal(twice, 2 * x.grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["dense", "index"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_retain_graph_backward_twice_same_bits(kind, dtype, device, form, reduction):
    """The first backward consumes the forward's gradient (scaled in place); the second
    recomputes it with cls_backward (same kernel, same scaling): identical bits, also with
    an upstream that is not 1 (AMP's loss scale, a 'mean' of a 'mean')."""
    A, C = 37, 11
    x = (torch.randn(A, C) * 3).to(dtype).to(device).requires_grad_()
    t = labels_for((A,), C).to(device) if form == "index" else torch.rand(A, C).to(dtype).to(device)
    kw = {"score": torch.rand(A).to(dtype).to(device)} if form == "index" else {}
    out = call(DF, kind, x, t, reduction, label_smoothing=0.05, **kw)
    up = torch.randn(out.shape).to(dtype).to(device) if reduction == "none" else \
        torch.tensor(0.37, dtype=dtype, device=device)
    (g1,) = torch.autograd.grad(out, x, up, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x, up, retain_graph=True)
    assert torch.equal(g1, g2)
    # the backward op called directly gives the same bits too
    args = [t, None, None, None, kind, PARAMS[kind].get("alpha", -1.0) or -1.0,
            PARAMS[kind].get("gamma", 0.0), reduction, kw.get("score"), 0.05, -100]
    g3 = torch.ops.detloss.cls_backward(up, x.detach(), *args)
    assert torch.equal(g1, g3)


@pytest.mark.parametrize("device", devices())
def test_loss_backward_and_amp_scale_match_reference(device):
    """loss.backward() (upstream 1) and a GradScaler-like upstream, dense and index."""
    x64 = torch.randn(64, 80, dtype=torch.float64) * 2
    lab = labels_for((64,), 80)
    for t, tr in ((lab.to(device), lab), (one_hot(lab, 80, None, torch.float32).to(device),
                                          one_hot(lab, 80, None, torch.float64))):
        for up in (1.0, 65536.0):
            x = x64.float().to(device).requires_grad_()
            xr = x64.clone().requires_grad_()
            (DF.sigmoid_focal_loss(x, t, reduction="mean") * up).backward()
            (R.sigmoid_focal_loss(xr, tr, reduction="mean", ignore_index=-100) * up).backward()
            assert_close_dtype(x.grad / up, xr.grad / up, torch.float32)


# ----------------------------------------------------------------- registration
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck_index_and_smoothing(kind, reduction):
    x = (torch.randn(9, 5, dtype=torch.float64) * 2).requires_grad_()
    lab = torch.tensor([0, 4, 5, -1, -100, 2, 2, 7, 1])
    score = torch.rand(9, dtype=torch.float64)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    alpha = 0.75 if kind == "vfl" else 0.25

    def f(x):
        return torch.ops.detloss.cls_loss(x, lab, w, None, None, kind, alpha, 1.5, reduction,
                                          score, 0.1, -100)

    assert torch.autograd.gradcheck(f, (x,))


def _opcheck_cases():
    x = torch.randn(6, 5) * 2
    lab = torch.tensor([0, 4, 5, -1, -100, 2])
    score = torch.rand(6)
    for kind in KINDS:
        alpha = 0.75 if kind == "vfl" else 0.25
        for red in ("none", "mean", "sum"):
            yield (x.clone().requires_grad_(), lab, None, None, None, kind, alpha, 1.5, red,
                   score, 0.1, -100)
    yield (x.clone().requires_grad_(), lab.int(), torch.rand(5), None, None, "focal", 0.25, 2.0,
           "mean", None, 0.0, -100)
    yield (x.clone().requires_grad_(), torch.rand(6, 5), None, None, None, "qfl", -1.0, 2.0,
           "mean", None, 0.2, -100)


@pytest.mark.parametrize("args", list(_opcheck_cases()), ids=lambda a: f"{a[5]}-{a[8]}-{a[1].dtype}")
def test_opcheck_index_and_smoothing(args):
    torch.library.opcheck(torch.ops.detloss.cls_loss.default, args)
    plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(torch.ops.detloss.cls_loss_with_grad.default, plain)
    up = torch.randn(6, 5) if args[8] == "none" else torch.tensor(1.5)
    torch.library.opcheck(torch.ops.detloss.cls_backward.default, (up,) + plain)


def test_torch_compile_fullgraph_index_targets():
    torch._dynamo.reset()
    model = torch.nn.Linear(16, 80)
    lab = labels_for((64,), 80)
    score = torch.rand(64)

    def step(x):
        return DF.varifocal_loss(model(x), lab, score=score, reduction="sum", label_smoothing=0.1)

    x = torch.randn(64, 16)
    out_c = torch.compile(step, fullgraph=True)(x)
    grads_c = torch.autograd.grad(out_c, list(model.parameters()))
    out_e = step(x)
    grads_e = torch.autograd.grad(out_e, list(model.parameters()))
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------- errors and modules
def test_index_errors_name_the_argument():
    x = torch.randn(4, 3)
    lab = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"class indices .* input.shape\[:-1\] = \[4\], got \[4, 1\]"):
        DF.sigmoid_focal_loss(x, lab.view(4, 1))
    with pytest.raises(ValueError, match="a dense 0/1 target must be a floating tensor"):
        DF.sigmoid_focal_loss(x, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="int32/int64"):
        DF.sigmoid_focal_loss(x, lab.to(torch.int16))
    with pytest.raises(ValueError, match=r"score of shape \[3\] must have the shape of target \[4\]"):
        DF.sigmoid_focal_loss(x, lab, score=torch.rand(3))
    with pytest.raises(TypeError, match="score must be a floating tensor"):
        DF.sigmoid_focal_loss(x, lab, score=torch.ones(4, dtype=torch.long))
    with pytest.raises(TypeError, match="score must be a torch.Tensor"):
        DF.sigmoid_focal_loss(x, lab, score=[1.0])
    with pytest.raises(ValueError, match="score is only used with class-index targets"):
        DF.sigmoid_focal_loss(x, torch.rand(4, 3), score=torch.rand(4))
    with pytest.raises(ValueError, match="label must be None with class-index targets"):
        DF.varifocal_loss(x, lab, label=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
        DF.sigmoid_focal_loss(x, lab, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 1\]"):
        torch.ops.detloss.cls_loss(x, lab, None, None, None, "bce", -1.0, 0.0, "sum", None, -0.1, -100)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        DF.sigmoid_focal_loss(x, lab, ignore_index=1.5)
    with pytest.raises(RuntimeError, match="score requires grad"):
        DF.sigmoid_focal_loss(x.requires_grad_(), lab, score=torch.rand(4, requires_grad=True))


def test_nn_modules_take_index_targets():
    x = torch.randn(30, 6, requires_grad=True)
    lab = labels_for((30,), 6, ignore=-1)
    score = torch.rand(30)
    crit = DN.VariFocalLoss(torch.nn.BCEWithLogitsLoss(reduction="sum"), gamma=2.0, alpha=0.75,
                            ignore_index=-1, label_smoothing=0.1)
    out = crit(x, lab, score=score)
    ref = R.varifocal_loss(x, lab, alpha=0.75, gamma=2.0, reduction="sum", score=score,
                           ignore_index=-1, label_smoothing=0.1)
    torch.testing.assert_close(out, ref.float(), rtol=2e-5, atol=1e-6)
    bce = DN.BCEWithLogitsLoss(pos_weight=torch.rand(6) + 0.5)
    ref = R.binary_cross_entropy_with_logits(x, lab, pos_weight=bce.pos_weight, score=score)
    torch.testing.assert_close(bce(x, lab, score=score), ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_class_major_logits_read_in_place(kind, reduction, device):
    """A detection head's [B, C, A] output permuted to [B, A, C] (not contiguous) is read in
    place: the same values and gradients as its contiguous copy, the loss and the gradient in
    the input's layout (no copy either way)."""
    B, C, A = 2, 7, 45
    x_cm = (torch.randn(B, C, A) * 3).to(device).permute(0, 2, 1).requires_grad_()
    x_c = x_cm.detach().contiguous().requires_grad_()
    lab = labels_for((B, A), C).to(device)
    score = torch.rand(B, A, device=device)
    a = call(DF, kind, x_cm, lab, reduction, score=score, label_smoothing=0.1)
    b = call(DF, kind, x_c, lab, reduction, score=score, label_smoothing=0.1)
    up = torch.randn(a.shape, device=device) if reduction == "none" else None
    (ga,) = torch.autograd.grad(a, x_cm, up)
    (gb,) = torch.autograd.grad(b, x_c, up)
    assert_close_dtype(a, b.double(), torch.float32)
    assert_close_dtype(ga, gb.double(), torch.float32)
    assert ga.stride() == x_cm.stride()
    if reduction == "none":
        assert a.stride() == x_cm.stride()
