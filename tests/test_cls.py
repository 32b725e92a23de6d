"""The classification family (bce, focal, qfl, vfl): values and gradients against the
pure-PyTorch reference, registration (gradcheck, opcheck, torch.compile), autocast,
argument errors and the nn drop-ins. Numerics at the edges and the CUDA-marked cases:
test_cls_numerics.py."""

import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R
from conftest import DTYPES, assert_close_dtype, devices
from cls_cases import DEFAULT_PARAMS, KINDS, NAMES, check_parity, loss, targets


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
