"""Defects found by generated and bad inputs (issue 15), each with its test: never silent
garbage, never an infinite gradient the contract says is finite, never a huge copy before
an argument check."""
import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
import detloss_cuda.reference as R


def _meta(shape):
    return torch.rand(shape, device="meta")


@pytest.mark.parametrize("call", [
    lambda x: DF.binary_cross_entropy_with_logits(x, _meta((4, 3)), reduction="none"),
    lambda x: DF.binary_cross_entropy_with_logits(x, torch.rand(4, 3), pos_weight=_meta((3,))),
    lambda x: DF.sigmoid_focal_loss(x, torch.rand(4, 3), weight=_meta((4, 3))),
    lambda x: DF.sigmoid_focal_loss(x, torch.zeros(4, dtype=torch.long), score=_meta((4,))),
    lambda x: DF.iou_loss(torch.rand(4, 4), _meta((4, 4))),
    lambda x: DF.box_iou_matrix(torch.rand(4, 4), _meta((5, 4))),
    lambda x: DF.distribution_focal_loss(torch.randn(4, 3), _meta((4,))),
], ids=["bce-target", "bce-pos_weight", "focal-weight", "focal-score", "iou", "matrix", "dfl"])
def test_a_meta_operand_is_an_error_not_garbage(call):
    """A meta operand sends the call to the fake kernels, which returned a CPU tensor of
    uninitialised memory (-1.7e+29 as a loss): they now check devices as the kernels do."""
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        call(x)


def test_all_meta_still_gives_shapes():
    out = DF.sigmoid_focal_loss(_meta((4, 3)), _meta((4, 3)), reduction="none")
    assert out.device.type == "meta" and out.shape == (4, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=str)
def test_giou_gradient_finite_for_zero_area_enclosing_box(dtype):
    """p = [0, 0, 1, 0] (zero height) against itself: the enclosing box has zero area, where
    the penalty's derivative is 1/eps (inf in fp16, 5e6 in fp32): taken as 0 (documented)."""
    p = torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=dtype, requires_grad=True)
    loss = DF.iou_loss(p, p.detach(), "giou", reduction="sum")
    (g,) = torch.autograd.grad(loss, p)
    assert torch.isfinite(g).all() and g.abs().max() <= 2, g
    # summed over a broadcast box it was NaN
    q = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(DF.iou_loss(q.expand(8, 4), p.detach().expand(8, 4), "giou",
                                           reduction="sum"), q)
    assert torch.isfinite(g).all()
    # the reference makes the same choice
    pr = p.detach().double().requires_grad_()
    (gr,) = torch.autograd.grad(R.iou_loss(pr, pr.detach(), "giou", reduction="sum"), pr)
    assert torch.isfinite(gr).all() and gr.abs().max() <= 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_bbox_iou_in_half_rounds_the_metric_once(dtype):
    """A GIoU near 0: the metric, not 1 - (the loss rounded to fp16), is rounded to fp16."""
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    b = torch.tensor([[10.4, 0.0, 20.4, 10.0]], dtype=torch.float64)
    exact = 1 - R.iou_loss(a, b, "giou", reduction="none", eps=1e-7)
    got = DF.bbox_iou(a.to(dtype), b.to(dtype), xywh=False, GIoU=True)
    ref = (1 - R.iou_loss(a.to(dtype).double(), b.to(dtype).double(), "giou", reduction="none"))
    assert got.dtype == dtype and got.shape == (1, 1)
    assert got.item() == ref.to(dtype).item(), (got.item(), ref.item(), exact.item())
    # and differentiable through the casts
    x = a.to(dtype).requires_grad_()
    DF.bbox_iou(x, b.to(dtype), xywh=False, GIoU=True).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_dfl_checks_target_before_copying_pred():
    """An expanded pred of 2^31 rows and a target of the wrong shape: the shape error, at
    once, not an attempt to copy 137 GB first."""
    pred = torch.randn(1, 16).expand(2**31, 16)
    with pytest.raises(ValueError, match="target of shape"):
        DF.distribution_focal_loss(pred, torch.rand(7))


def test_nn_dfl_none_is_a_type_error():
    with pytest.raises(TypeError, match="pred_dist must be a torch.Tensor"):
        DN.DistributionFocalLoss()(None, torch.rand(4, 4))
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        DN.DistributionFocalLoss()(torch.randn(4, 64), None)
