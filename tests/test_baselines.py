"""The benchmark's eager baselines (the code users run today) compute the same losses as
the oracle: the benchmark compares like with like."""
import pytest
import torch

import detloss_cuda.baselines as BL
import detloss_cuda.bench as B
import detloss_cuda.reference as R


@pytest.mark.parametrize("name", [n for n, op in B.OPS.items() if op.family == "cls"])
def test_baseline_matches_reference(name):
    op = B.OPS[name]
    inputs = op.make(8000, torch.float64, "cpu", torch.Generator().manual_seed(0))
    ref_fn, kw = {
        "bce": (R.binary_cross_entropy_with_logits, {}),
        "focal": (R.sigmoid_focal_loss, dict(alpha=0.25, gamma=2.0)),
        "qfl": (R.quality_focal_loss, dict(gamma=2.0)),
        "vfl": (R.varifocal_loss, dict(alpha=0.75, gamma=2.0)),
    }[name]
    expected = ref_fn(inputs["x"], inputs["t"], reduction="sum", **kw)
    torch.testing.assert_close(op.eager(inputs), expected)
    torch.testing.assert_close(op.fused(inputs), expected)


@pytest.mark.parametrize("name", [n for n, op in B.OPS.items() if op.family == "cls_idx"])
def test_index_baseline_matches_reference(name):
    """The index rows: eager builds the one-hot target (mmdet's QFL takes (label, score)),
    the fused op and the dense fused op take the labels / the built target."""
    op = B.OPS[name]
    inputs = op.make(8000, torch.float64, "cpu", torch.Generator().manual_seed(0))
    assert (inputs["labels"] == 80).float().mean() > 0.8  # mostly background, marked C
    expected = op.reference(inputs)
    torch.testing.assert_close(op.eager(inputs), expected)
    torch.testing.assert_close(op.fused(inputs), expected)
    torch.testing.assert_close(op.extra["dense"](inputs), expected)


@pytest.mark.parametrize("name", ["iou", "giou", "diou", "ciou", "iou_matrix"])
def test_box_baseline_matches_reference(name):
    op = B.OPS[name]
    inputs = op.make(4096, torch.float64, "cpu", torch.Generator().manual_seed(0))
    if name == "iou_matrix":
        expected = R.box_iou_matrix(inputs["x"], inputs["t"])
        torch.testing.assert_close(op.eager(inputs), expected)
        torch.testing.assert_close(op.fused(inputs), expected)
        return
    expected = R.iou_loss(inputs["x"], inputs["t"], name, reduction="sum")
    # ultralytics adds eps to the heights it divides by: the same loss to ~1e-9 relative
    torch.testing.assert_close(op.eager(inputs), expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(op.fused(inputs), expected)


@pytest.mark.parametrize("name", ["dfl", "integral"])
def test_dfl_baseline_matches_reference(name):
    op = B.OPS[name]
    inputs = op.make(16 * 4096, torch.float64, "cpu", torch.Generator().manual_seed(0))
    if name == "dfl":
        expected = R.distribution_focal_loss(inputs["x"], inputs["t"], reduction="sum")
    else:
        expected = R.distribution_integral(inputs["x"]).sum()
    torch.testing.assert_close(op.eager(inputs), expected)
    torch.testing.assert_close(op.fused(inputs), expected)
