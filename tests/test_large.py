"""Past 2^31 elements (int64 indexing everywhere): a classification op, a box op and DFL,
forward sum and backward, each checked against the same computation on one period of the
data. The big tensors repeat a block whose row count is a prime (so no period lines up with
2^31, a vector width or a chunk): an index that wrapped at 2^31 would read a different row
(or outside the buffer) and break the element-by-element comparison of the gradient; the sum
is (number of whole periods) x (the period's sum) + (the tail's sum).

bf16 / fp16 keeps the peak near 9 GiB (one test at a time); about a minute on 2 cores.
The same cases run on CUDA where a GPU is (cuda-marked)."""
import gc

import pytest
import torch

import detloss_cuda.functional as DF
from conftest import devices

BIG = 2**31 + 4099  # past int32, not a multiple of any vector width or chunk
PERIOD = 999_983  # rows of the repeated block: a prime

pytestmark = pytest.mark.slow


def _tile(block, rows):
    """`rows` rows repeating `block` (its first dimension), written period by period."""
    out = torch.empty((rows, *block.shape[1:]), dtype=block.dtype, device=block.device)
    for b in range(0, rows, block.shape[0]):
        e = min(rows, b + block.shape[0])
        out[b:e] = block[: e - b]
    return out


def _check_tiled(big, block):
    """Every row of `big` equals the row of `block` it repeats, bit for bit."""
    p = block.shape[0]
    for b in range(0, big.shape[0], p):
        e = min(big.shape[0], b + p)
        assert torch.equal(big[b:e], block[: e - b]), f"rows {b}..{e} differ"


def _periodic_sum(fn, block, rows):
    """The sum of fn over `rows` rows of the repeated block, in float64 from per-period sums."""
    q, r = divmod(rows, block.shape[0])
    return q * float(fn(block)) + (float(fn(block[:r])) if r else 0.0)


def _grad(fn, x):
    x = x.detach().clone().requires_grad_()
    return torch.autograd.grad(fn(x), x)[0]


@pytest.mark.parametrize("device", devices())
def test_classification_past_2_31(device):
    """Focal loss with class-index targets over an [A, 80] bf16 logit tensor of 2^31 + 4099
    elements (4.3 GB; the index form keeps the targets at 8 bytes an anchor): the sum and the
    gradient (computed in the forward) against one period."""
    C = 80
    A = -(-BIG // C)
    g = torch.Generator().manual_seed(0)
    xb = (torch.randn(PERIOD, C, generator=g) * 2 - 3).bfloat16().to(device)
    lb = torch.randint(-1, C + 1, (PERIOD,), generator=g).to(device)  # -1 and C: background
    x, lab = _tile(xb, A), _tile(lb, A)
    assert x.numel() > 2**31
    x.requires_grad_()
    total = DF.sigmoid_focal_loss(x, lab, reduction="sum")
    (grad,) = torch.autograd.grad(total, x)
    del x
    # each gradient element is elementwise arithmetic: bit-identical to the period's
    _check_tiled(grad, _grad(lambda t: DF.sigmoid_focal_loss(t, lb, reduction="sum"), xb))
    del grad
    # the period's sum from the float32 logits (the same values: bf16 is exact in float32)
    # and labels cut to each piece; the big sum is rounded once to bf16 (2^-8 relative)
    q, r = divmod(A, PERIOD)
    want = q * float(DF.sigmoid_focal_loss(xb.float(), lb, reduction="sum"))
    want += float(DF.sigmoid_focal_loss(xb[:r].float(), lb[:r], reduction="sum"))
    assert total.dtype == torch.bfloat16
    assert abs(float(total) - want) <= 2**-8 * abs(want), (float(total), want)
    gc.collect()


def _boxes(n, g):
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 1], -1)


@pytest.mark.parametrize("device", devices())
def test_box_past_2_31(device):
    """GIoU: (1) a forward sum over 2^31 + 4099 broadcast pairs ([N, 1, 4] x [1, M, 4], read
    in place, no pair tensor); (2) a forward and backward over 2^29 + 4099 bf16 boxes against
    one target box: 2^31 + elements of pred and of its gradient."""
    g = torch.Generator().manual_seed(1)
    M = 4099
    N = -(-BIG // M)
    t = _boxes(M, g).to(device).view(1, M, 4)
    pb = _boxes(16_411, g).to(device).view(-1, 1, 4)  # a prime number of rows again
    p = _tile(pb, N)
    total = DF.iou_loss(p, t, "giou", reduction="sum")
    want = _periodic_sum(lambda b: DF.iou_loss(b.double(), t.double(), "giou", reduction="sum"), pb, N)
    # float32 pair terms, summed with compensation: far inside float32's 2^-24 per term
    assert N * M > 2**31 and abs(float(total) - want) <= 1e-6 * want, (float(total), want)
    del p

    rows = -(-(2**31 + 4099) // 4)
    tb = t[0, :1].bfloat16()  # [1, 4]: broadcast against every row
    pb = _boxes(PERIOD, g).bfloat16().to(device)
    ph = _tile(pb, rows).requires_grad_()
    assert ph.numel() > 2**31
    total = DF.iou_loss(ph, tb, "giou", reduction="sum")
    (gp,) = torch.autograd.grad(total, ph)
    del ph
    _check_tiled(gp, _grad(lambda b: DF.iou_loss(b, tb, "giou", reduction="sum"), pb))
    del gp
    want = _periodic_sum(lambda b: DF.iou_loss(b.float(), tb.float(), "giou", reduction="sum"), pb, rows)
    # bf16 output: a sum of ~5e8 terms is past fp16's range
    assert total.dtype == torch.bfloat16 and abs(float(total) - want) <= 2**-8 * want
    gc.collect()


@pytest.mark.parametrize("device", devices())
def test_dfl_past_2_31(device):
    """DFL over 2^25 + rows of 64 bf16 bins (2^31 + elements; 64 rather than YOLO's 16 bins
    keeps the per-row target and statistics small): the sum and the gradient."""
    R = 64
    rows = -(-BIG // R)
    g = torch.Generator().manual_seed(2)
    zb = (torch.randn(PERIOD, R, generator=g) * 2).bfloat16().to(device)
    yb = (torch.rand(PERIOD, generator=g) * (R - 1)).to(device)
    z, y = _tile(zb, rows).requires_grad_(), _tile(yb, rows)
    assert z.numel() > 2**31
    total = DF.distribution_focal_loss(z, y, reduction="sum")
    (grad,) = torch.autograd.grad(total, z)
    del z
    _check_tiled(grad, _grad(lambda t: DF.distribution_focal_loss(t, yb, reduction="sum"), zb))
    del grad
    q, r = divmod(rows, PERIOD)
    want = q * float(DF.distribution_focal_loss(zb.float(), yb, reduction="sum"))
    want += float(DF.distribution_focal_loss(zb[:r].float(), yb[:r], reduction="sum"))
    assert total.dtype == torch.bfloat16
    assert abs(float(total) - want) <= 2**-8 * abs(want), (float(total), want)
    gc.collect()
