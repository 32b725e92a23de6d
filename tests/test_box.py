"""The box family (IoU, GIoU, DIoU, CIoU): values and gradients w.r.t. both boxes against
the pure-PyTorch reference, known values, degenerate boxes, registration (gradcheck, opcheck,
torch.compile), argument errors and the CUDA-marked cases. The pairwise matrix and the
compatibility with torchvision.ops and ultralytics' bbox_iou: test_box_matrix.py."""
import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R
from conftest import DTYPES, devices
from box_cases import FORMATS, KINDS, assert_close_dtype, boxes, check_parity, near, without_rounding_ties


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_parity(kind, fmt, dtype, device, reduction):
    p = boxes((1003,), fmt)
    check_parity(kind, fmt, p, near(p), dtype, device, reduction)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shapes", [((1, 4), (50, 4)), ((50, 4), (1, 4)), ((4,), (30, 4)),
                                    ((3, 20, 4), (20, 4)), ((3, 1, 4), (1, 20, 4)),
                                    ((4,), (4,)), ((0, 4), (0, 4)), ((2, 0, 4), (1, 4))],
                         ids=str)
def test_broadcast_leading_dims(kind, shapes, device):
    sp, st = shapes
    p = boxes(sp[:-1])
    t = boxes(st[:-1])
    for red in ("none", "sum", "mean"):
        check_parity(kind, "xyxy", p, t, torch.float64, device, red)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_only_pred_requires_grad_and_weight(kind, device):
    p = boxes((64,))
    t = near(p)
    w = torch.rand(64, dtype=torch.float64) + 0.5
    check_parity(kind, "xywh", p, t, torch.float32, device, "sum", weight=w, grads=(True, False))
    check_parity(kind, "xyxy", p, t, torch.float64, device, "none", weight=w[:1],
                 grads=(False, True))


@pytest.mark.parametrize("device", devices())
def test_non_contiguous_and_strided_rows(device):
    # boxes sliced out of a detection tensor [N, 6] (x1, y1, x2, y2, score, class): rows
    # with stride 6; and a transposed layout
    det = torch.cat([boxes((200,)), torch.rand(200, 2, dtype=torch.float64)], -1)
    p = det[:, :4]
    assert not p.is_contiguous()
    check_parity("ciou", "xyxy", p, near(p.contiguous()), torch.float64, device, "none")
    pt = boxes((200,)).t().contiguous().t()  # column-major [200, 4]
    check_parity("giou", "xyxy", pt, near(pt.contiguous()), torch.float64, device, "mean")


def test_mixed_dtypes_target_grad_dtype():
    p = boxes((20,), dtype=torch.float32).requires_grad_()
    t = near(boxes((20,))).requires_grad_()  # float64 target
    out = DF.iou_loss(p, t, "giou", reduction="sum")
    assert out.dtype == torch.float32
    gp, gt = torch.autograd.grad(out, (p, t))
    assert gp.dtype == torch.float32 and gt.dtype == torch.float64


# ------------------------------------------------------------------------------ known values
@pytest.mark.parametrize("device", devices())
def test_known_values(device):
    def L(p, t, kind):
        return DF.iou_loss(torch.tensor(p, device=device), torch.tensor(t, device=device), kind,
                           reduction="none").item()

    # identical boxes: 0 for all kinds (up to eps / area)
    for kind in KINDS:
        assert L([[0.0, 0, 1, 1]], [[0.0, 0, 1, 1]], kind) == pytest.approx(0, abs=1e-6)
        assert L([[2.0, 3, 7, 11]], [[2.0, 3, 7, 11]], kind) == pytest.approx(0, abs=1e-6)
    # a quarter-size box inside another (torchvision's tests): IoU 1/4, C = union
    inside = ([[0.0, 0, 1, 1]], [[-1.0, -1, 1, 1]])
    assert L(*inside, "iou") == pytest.approx(0.75, abs=1e-6)
    assert L(*inside, "giou") == pytest.approx(0.75, abs=1e-6)
    assert L(*inside, "diou") == pytest.approx(0.8125, abs=1e-6)
    assert L(*inside, "ciou") == pytest.approx(0.8125, abs=1e-6)  # same aspect: v = 0
    # side-by-side unit boxes: IoU 0, enclosing area 2 = union
    side = ([[0.0, 0, 1, 1]], [[1.0, 0, 2, 1]])
    assert L(*side, "iou") == pytest.approx(1.0, abs=1e-6)
    assert L(*side, "giou") == pytest.approx(1.0, abs=1e-6)
    # far apart: GIoU -> 2
    assert L([[0.0, 0, 1, 1]], [[100.0, 100, 101, 101]], "giou") == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("device", devices())
def test_disjoint_boxes_still_pulled_together(device):
    p = torch.tensor([[0.0, 0, 1, 1]], device=device, requires_grad=True)
    t = torch.tensor([[3.0, 0, 4, 1]], device=device)
    (g,) = torch.autograd.grad(DF.iou_loss(p, t, "iou", reduction="sum"), p)
    assert torch.all(g == 0)  # IoU is flat when boxes do not overlap
    for kind in ("giou", "diou", "ciou"):
        loss = DF.iou_loss(p, t, kind, reduction="sum")
        (g,) = torch.autograd.grad(loss, p)
        assert g.abs().sum() > 0, kind
        assert g[0, 2] < 0, (kind, g)  # the right edge is pulled towards the target
        step = (p - 0.1 * g).detach()
        assert DF.iou_loss(step, t, kind, reduction="sum") < loss, kind
        if kind != "giou":  # the centre-distance term moves the centre towards the target's
            assert g[0, 0] + g[0, 2] < 0, (kind, g)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_degenerate_boxes_are_finite(kind, fmt, dtype, device):
    cases = [
        ([0.0, 0, 0, 1], [0.0, 0, 1, 1]),  # zero width
        ([0.0, 0, 1, 0], [0.0, 0, 1, 1]),  # zero height
        ([2.0, 2, 2, 2], [0.0, 0, 1, 1]),  # zero area
        ([2.0, 2, 2, 2], [2.0, 2, 2, 2]),  # identical degenerate
        ([0.0, 0, 0, 0], [0.0, 0, 0, 0]),  # all zero
        ([0.0, 0, 1e4, 1e4], [5e3, 5e3, 1e4, 9e3]),  # large coordinates
        ([1e4, 1e4, 1e4 + 1, 1e4 + 2], [1e4, 1e4, 1e4 + 2, 1e4 + 1]),  # small boxes far out
    ]
    p = torch.tensor([c[0] for c in cases], dtype=dtype, device=device)
    t = torch.tensor([c[1] for c in cases], dtype=dtype, device=device)
    if fmt == "xywh":  # the same boxes, as centre and size
        p = torch.cat([(p[:, :2] + p[:, 2:]) / 2, p[:, 2:] - p[:, :2]], -1)
        t = torch.cat([(t[:, :2] + t[:, 2:]) / 2, t[:, 2:] - t[:, :2]], -1)
    p.requires_grad_()
    t.requires_grad_()
    out = DF.iou_loss(p, t, kind, fmt, reduction="none")
    gp, gt = torch.autograd.grad(out.sum(), (p, t))
    assert torch.isfinite(out).all(), out
    assert torch.isfinite(gp).all() and torch.isfinite(gt).all(), (gp, gt)
    assert ((out >= -1e-3) & (out <= 2 + 1e-3)).all(), out


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_ties_split_the_gradient_like_autograd(kind, device):
    # identical boxes and shared edges: every min/max is a tie
    p = torch.tensor([[0.0, 0, 2, 1], [0.0, 0, 1, 1], [1.0, 1, 3, 2]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0, 2, 1], [0.0, 0, 1, 2], [1.0, 0, 3, 2]], dtype=torch.float64)
    check_parity(kind, "xyxy", p, t, torch.float64, device, "none")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
def test_empty(kind, device):
    p = torch.zeros(0, 4, device=device, requires_grad=True)
    t = torch.zeros(0, 4, device=device)
    out = DF.iou_loss(p, t, kind, reduction="mean")
    assert out.item() == 0.0
    out.backward()
    assert p.grad.shape == (0, 4)
    assert DF.iou_loss(p, t, kind, reduction="none").shape == (0,)


@pytest.mark.parametrize("device", devices())
def test_reduction_is_deterministic(device):
    p = boxes((300_001,)).float().to(device)
    t = near(p.double()).float().to(device)
    first = DF.iou_loss(p, t, "ciou", reduction="sum")
    assert all(torch.equal(DF.iou_loss(p, t, "ciou", reduction="sum"), first) for _ in range(3))


# ------------------------------------------------------------------- registration checks
@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])  # CIoU: alpha is held constant
@pytest.mark.parametrize("fmt", FORMATS)                   # by design, so finite differences
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])  # disagree; see test_parity
def test_gradcheck_both_boxes(kind, fmt, reduction):
    p = boxes((8,), fmt).requires_grad_()
    t = near(boxes((8,), fmt), 0.5).requires_grad_()
    w = torch.rand(8, dtype=torch.float64) + 0.5

    def f(p, t):
        return torch.ops.detloss.box_loss(p, t, w, kind, fmt, 1e-7, reduction)

    assert torch.autograd.gradcheck(f, (p, t))


def _box_opcheck_cases():
    p = boxes((6,), dtype=torch.float32)
    t = near(p)
    for kind in KINDS:
        for red in ("none", "mean", "sum"):
            yield (p.clone().requires_grad_(), t.clone().requires_grad_(), None, kind, "xyxy", 1e-7, red)
    yield (p[:1].clone().requires_grad_(), t, torch.rand(6), "ciou", "xywh", 1e-7, "sum")
    yield (p.clone().requires_grad_(), t[:1], None, "giou", "xyxy", 1e-7, "none")


@pytest.mark.parametrize("args", list(_box_opcheck_cases()), ids=lambda a: f"{a[3]}-{a[6]}")
def test_opcheck_box_loss(args):
    torch.library.opcheck(torch.ops.detloss.box_loss.default, args)


def test_opcheck_box_backward_and_matrix():
    p = boxes((6,), dtype=torch.float32)
    t = near(p)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(torch.ops.detloss.box_backward.default,
                              (torch.randn(6), p, t, None, "ciou", "xyxy", 1e-7, "none", mask))
    torch.library.opcheck(torch.ops.detloss.box_iou_matrix.default,
                          (p, t, "giou", "xyxy", 1e-7))
    torch.library.opcheck(torch.ops.detloss.box_iou_matrix.default,
                          (p[None].expand(2, 6, 4).contiguous(), t[None].repeat(2, 1, 1), "iou", "xywh", 1e-7))


def test_torch_compile_fullgraph_ciou():
    torch._dynamo.reset()
    head = torch.nn.Linear(16, 4)
    crit = DN.CIoULoss(box_format="xywh", reduction="mean")

    def step(x, t):
        out = head(x)
        pred = torch.cat([out[:, :2], out[:, 2:].exp()], -1)  # positive sizes
        return crit(pred, t)

    x = torch.randn(64, 16)
    t = boxes((64,), "xywh", dtype=torch.float32, scale=2.0)
    compiled = torch.compile(step, fullgraph=True)
    out_c = compiled(x, t)
    gc = torch.autograd.grad(out_c, list(head.parameters()))
    out_e = step(x, t)
    ge = torch.autograd.grad(out_e, list(head.parameters()))
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_nn_modules():
    p = boxes((40,))
    t = near(p)
    w = torch.rand(40, dtype=torch.float64)
    for cls, kind in ((DN.IoULoss, "iou"), (DN.GIoULoss, "giou"), (DN.DIoULoss, "diou"),
                      (DN.CIoULoss, "ciou")):
        m = cls(box_format="xyxy", reduction="sum")
        assert_close_dtype(m(p, t, w), R.iou_loss(p, t, kind, reduction="sum", weight=w),
                           torch.float64)
    with pytest.raises(ValueError, match="box_format"):
        DN.GIoULoss(box_format="cxcywh")


def test_double_backward_is_a_clear_error():
    p = boxes((4,)).requires_grad_()
    (g,) = torch.autograd.grad(DF.iou_loss(p, near(p.detach()), "giou", reduction="sum"), p,
                               create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through box_loss is not supported"):
        g.sum().backward()


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    p = boxes((5,), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"pred must have shape \[\.\.\., 4\], got \[5, 3\]"):
        DF.iou_loss(p[:, :3], p)
    with pytest.raises(ValueError, match=r"target must have shape \[\.\.\., 4\], got \[5, 5\]"):
        DF.iou_loss(p, torch.rand(5, 5))
    with pytest.raises(ValueError, match=r"leading dims of pred \[5, 4\] and target \[3, 4\] do not broadcast"):
        DF.iou_loss(p, p[:3])
    with pytest.raises(TypeError, match="pred must be a floating tensor.*box_iou_matrix takes integer"):
        DF.iou_loss(p.long(), p)
    with pytest.raises(ValueError, match="kind must be one of 'iou', 'giou', 'diou', 'ciou'"):
        DF.iou_loss(p, p, kind="eiou")
    with pytest.raises(ValueError, match="box_format must be 'xyxy'"):
        DF.iou_loss(p, p, box_format="cxcywh")
    with pytest.raises(ValueError, match="reduction must be one of"):
        DF.iou_loss(p, p, reduction="max")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        DF.iou_loss(p, p, eps=-1.0)
    with pytest.raises(ValueError, match=r"weight of shape \[4\] is not broadcastable"):
        DF.iou_loss(p, p, weight=torch.rand(4))
    with pytest.raises(ValueError, match=r"boxes1 and boxes2 must be \[N, 4\] and \[M, 4\]"):
        DF.box_iou_matrix(p, p[None])
    with pytest.raises(RuntimeError, match="weight requires grad"):
        DF.iou_loss(p.requires_grad_(), p.detach(), weight=torch.rand(5, requires_grad=True))


@pytest.mark.cuda
def test_mixed_devices_error():
    p = boxes((5,), dtype=torch.float32)
    with pytest.raises((ValueError, RuntimeError), match="device"):
        DF.iou_loss(p.cuda(), p)
    with pytest.raises((ValueError, RuntimeError), match="device"):
        DF.box_iou_matrix(p.cuda(), p)


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_matches_cpu(kind, fmt, dtype):
    p, t = without_rounding_ties(*(lambda b: (b, near(b)))(boxes((100_003,), fmt)), fmt, dtype)
    assert p.shape[0] > 95_000  # ties are rare: the test still covers nearly every pair
    w = torch.rand(p.shape[0], dtype=torch.float64)
    g64 = torch.randn(p.shape[0], dtype=torch.float64)
    oc, gc = check_parity(kind, fmt, p, t, dtype, "cuda", "none", weight=w, g64=g64)
    oh, gh = check_parity(kind, fmt, p, t, dtype, "cpu", "none", weight=w, g64=g64)
    assert_close_dtype(oc, oh.double(), dtype)
    for a, b in zip(gc, gh):
        assert_close_dtype(a, b.double(), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [0, 1, 2])
def test_cuda_misaligned_rows(offset):
    base = boxes((1000,)).reshape(-1)
    flat = torch.cat([torch.zeros(offset, dtype=torch.float64), base])
    p = flat[offset:].view(1000, 4)
    check_parity("ciou", "xyxy", p, near(p), torch.float32, "cuda", "none")
    check_parity("giou", "xywh", p, near(p), torch.float16, "cuda", "sum")


@pytest.mark.cuda
def test_cuda_matrix_large_tiles():
    a = boxes((2, 1000)).float().cuda()
    b = boxes((2, 77)).float().cuda()
    m = DF.box_iou_matrix(a, b, "diou")
    ref = R.box_iou_matrix(a.double().cpu(), b.double().cpu(), "diou")
    assert_close_dtype(m, ref, torch.float32)
