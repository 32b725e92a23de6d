"""The box family's pairwise matrix (the metric of every pair, batched, integer and empty
boxes, no gradient) and its compatibility with torchvision.ops' box losses and ultralytics'
bbox_iou."""
import pytest
import torch

import detloss_cuda.baselines as BL
import detloss_cuda.functional as DF
import detloss_cuda.reference as R
from conftest import devices
from box_cases import FORMATS, KINDS, assert_close_dtype, boxes, near


# ------------------------------------------------------------------------------ matrix
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_matrix_is_the_loss_metric_of_every_pair(kind, fmt, dtype, device):
    a = boxes((37,), fmt).to(dtype).to(device)
    b = boxes((45,), fmt).to(dtype).to(device)
    m = DF.box_iou_matrix(a, b, kind, fmt)
    assert m.shape == (37, 45) and m.dtype == dtype
    # the loop over pairs, through the (separately tested) loss op, on the same inputs in
    # float64 (1 - loss in fp16 would round twice)
    loop = 1 - DF.iou_loss(a[:, None, :].double(), b[None, :, :].double(), kind, fmt,
                           reduction="none")
    assert_close_dtype(m, loop.double(), dtype)
    ref = R.box_iou_matrix(a.double().cpu(), b.double().cpu(), kind, fmt)
    assert_close_dtype(m, ref, dtype)


@pytest.mark.parametrize("device", devices())
def test_matrix_batched_integer_and_empty(device):
    a = boxes((3, 33)).to(device)
    b = boxes((3, 70)).to(device)
    m = DF.box_iou_matrix(a, b, "giou")
    assert m.shape == (3, 33, 70)
    for i in range(3):
        assert_close_dtype(m[i], R.box_iou_matrix(a[i].cpu(), b[i].cpu(), "giou"), torch.float64)
    ai = torch.tensor([[0, 0, 10, 10], [5, 5, 15, 15]], device=device)
    mi = DF.box_iou_matrix(ai, ai)
    assert mi.dtype == torch.float32
    assert mi[0, 1].item() == pytest.approx(25 / 175, rel=1e-6)
    assert DF.box_iou_matrix(a[0, :0], b[0]).shape == (0, 70)
    assert DF.box_iou_matrix(a[:, :0], b[:, :0]).shape == (3, 0, 0)


def test_matrix_has_no_gradient():
    a = boxes((5,)).requires_grad_()
    m = DF.box_iou_matrix(a, boxes((6,)))
    with pytest.raises(RuntimeError, match="box_iou_matrix is forward-only"):
        m.sum().backward()
    with torch.no_grad():
        DF.box_iou_matrix(a, boxes((6,)))  # what assigners do


# ------------------------------------------------------------------------------ compat
@pytest.mark.parametrize("xywh", [True, False])
@pytest.mark.parametrize("flags", [{}, {"GIoU": True}, {"DIoU": True}, {"CIoU": True}],
                         ids=["iou", "giou", "diou", "ciou"])
@pytest.mark.parametrize("shapes", [((1, 4), (300, 4)), ((300, 4), (300, 4))], ids=str)
def test_bbox_iou_matches_ultralytics(xywh, flags, shapes):
    b1 = boxes(shapes[0][:-1], "xywh" if xywh else "xyxy", dtype=torch.float32)
    b2 = boxes(shapes[1][:-1], "xywh" if xywh else "xyxy", dtype=torch.float32)
    b1.requires_grad_()
    ours = DF.bbox_iou(b1, b2, xywh=xywh, **flags)
    theirs = BL.bbox_iou(b1, b2, xywh=xywh, **flags)
    assert ours.shape == theirs.shape == (300, 1)
    # ultralytics adds eps to h in xyxy mode; the difference is O(eps)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    g1, = torch.autograd.grad(ours.sum(), b1)
    g2, = torch.autograd.grad(theirs.sum(), b1)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["generalized_box_iou_loss", "distance_box_iou_loss",
                                  "complete_box_iou_loss"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_ops(name, reduction):
    tv = pytest.importorskip("torchvision.ops", reason="torchvision is not installed")
    p = boxes((500,), dtype=torch.float32).requires_grad_()
    t = near(p.detach().double()).float()
    t = torch.cat([t[:, :2], torch.maximum(t[:, 2:], t[:, :2] + 0.05)], -1)  # valid boxes
    ours = getattr(DF, name)(p, t, reduction=reduction)
    theirs = getattr(tv, name)(p, t, reduction=reduction)
    assert ours.shape == theirs.shape
    # complete: torchvision's atan(w / h) vs atan(w / (h + eps)) differ by O(eps)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    g = torch.randn(ours.shape) if reduction == "none" else torch.ones(())
    g1, = torch.autograd.grad(ours, p, g)
    g2, = torch.autograd.grad(theirs, p, g)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    # and their empty-input convention
    e = torch.zeros(0, 4)
    assert getattr(DF, name)(e, e, reduction="mean").item() == getattr(tv, name)(e, e, reduction="mean").item() == 0
