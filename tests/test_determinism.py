"""Determinism (issue 15): under torch.use_deterministic_algorithms(True) every op runs, and
its outputs and gradients are the same bits run after run, and on the CPU for any number of
threads (the reductions add fixed-size chunks in a fixed order: README, Numerics).

Sizes span several reduction chunks and several threads' shares, so an order that followed
the thread count or the scheduling would show."""
import pytest
import torch

import detloss_cuda.functional as DF
from detloss_cuda.assign import task_aligned_assign
from conftest import devices, drivers, on_driver

N = 3 * 2**19 + 77  # elements: several chunks, not a multiple of any of them


def _cls(kind, index):
    def run(dev, dtype):
        g = torch.Generator().manual_seed(0)
        C = 80
        x = (torch.randn(N // C, C, generator=g) * 3).to(dev, dtype).requires_grad_()
        if index:
            t = torch.randint(-1, C + 1, (N // C,), generator=g).to(dev)
            s = torch.rand(N // C, generator=g).to(dev)
            kw = dict(score=s) if kind != "bce" else {}
        else:
            t, kw = torch.rand(N // C, C, generator=g).to(dev, dtype), {}
        f = {"bce": DF.binary_cross_entropy_with_logits, "focal": DF.sigmoid_focal_loss,
             "qfl": DF.quality_focal_loss, "vfl": DF.varifocal_loss}[kind]
        return x, f(x, t, reduction="mean", **kw)
    return run


def _box(kind):
    def run(dev, dtype):
        g = torch.Generator().manual_seed(1)
        xy = torch.rand(N // 4, 2, generator=g) * 100
        b = torch.cat([xy, xy + torch.rand(N // 4, 2, generator=g) * 40 + 0.5], -1)
        p = (b + torch.randn(b.shape, generator=g)).to(dev, dtype).requires_grad_()
        return p, DF.iou_loss(p, b.to(dev, dtype), kind, reduction="sum")
    return run


def _dfl(dev, dtype):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(N // 16, 16, generator=g).to(dev, dtype).requires_grad_()
    y = (torch.rand(N // 16, generator=g) * 15).to(dev)
    return z, DF.distribution_focal_loss(z, y, reduction="mean")


def _integral(dev, dtype):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(N // 16, 16, generator=g).to(dev, dtype).requires_grad_()
    return z, DF.distribution_integral(z).sum()


def _mask(dev, dtype):
    g = torch.Generator().manual_seed(4)
    P, B, H = 400, 6, 48
    coef = torch.randn(P, 32, generator=g).to(dev, dtype).requires_grad_()
    proto = torch.randn(B, 32, H, H, generator=g).to(dev, dtype).requires_grad_()
    xy = torch.rand(P, 2, generator=g) * H
    boxes = torch.cat([xy - 10, xy + 10], -1).to(dev)
    masks = torch.randint(0, 4, (B, H, H), generator=g).to(dev)
    bi = torch.randint(0, B, (P,), generator=g).to(dev)
    mi = torch.randint(0, 3, (P,), generator=g).to(dev)
    area = torch.full((P,), 0.1, device=dev)
    return (coef, proto), DF.prototype_mask_loss(coef, proto, bi, boxes, area, masks, mi)


CASES = {f"{k}-{'index' if i else 'dense'}": _cls(k, i) for k in ("bce", "focal", "qfl", "vfl")
         for i in (False, True)}
CASES.update({f"box-{k}": _box(k) for k in ("iou", "giou", "diou", "ciou")})
CASES.update({"dfl": _dfl, "integral": _integral, "mask": _mask})


def _run(case, dev, dtype):
    x, loss = CASES[case](dev, dtype)
    return (loss.detach(), *torch.autograd.grad(loss, x))


@pytest.fixture
def deterministic():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


def _same_bits(a, b):
    """Equal bit patterns (torch.equal alone would call -0.0 and 0.0 equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_mode_runs_and_repeats(case, dtype, device, deterministic):
    first = _run(case, device, dtype)
    second = _run(case, device, dtype)
    assert all(_same_bits(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_bits_do_not_depend_on_the_thread_count(case):
    was = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_run(case, "cpu", torch.float32))
    finally:
        torch.set_num_threads(was)
    for other in results[1:]:
        assert all(_same_bits(a, b) for a, b in zip(results[0], other))


def _assign_inputs(dev):
    g = torch.Generator().manual_seed(4)
    B, A, M, C = 2, 8400, 24, 80
    s = torch.rand(B, A, C, generator=g)
    anc = torch.rand(A, 2, generator=g) * 640
    pb = torch.cat([anc - torch.rand(A, 2, generator=g) * 60,
                    anc + torch.rand(A, 2, generator=g) * 60], -1).expand(B, A, 4).contiguous()
    xy = torch.rand(B, M, 2, generator=g) * 560
    gb = torch.cat([xy, xy + torch.rand(B, M, 2, generator=g) * 80 + 4], -1)
    lab = torch.randint(0, C, (B, M, 1), generator=g)
    mask = (torch.rand(B, M, 1, generator=g) > 0.2).float()
    return [t.to(dev) for t in (s, pb, anc, lab, gb, mask)]


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("topk2", [None, 3], ids=["topk2=topk", "topk2=3"])
def test_assigner_deterministic(driver, topk2, deterministic):
    """The same bits again: on the CPU with another thread count; on the CUDA drivers under
    another schedule (emulated: another block, warp and lane order), where topk2's phase groups
    each box's anchors in an order its atomic cursor decides, which must not matter."""
    with on_driver(driver) as (device, ns):
        args = _assign_inputs(device)
        first = task_aligned_assign(*args, topk=10, topk2=topk2)
        was = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            if driver == "emulated":
                getattr(torch.ops, ns).emu_set_seed(12345)
            second = task_aligned_assign(*args, topk=10, topk2=topk2)
        finally:
            torch.set_num_threads(was)
    assert all(_same_bits(a, b) for a, b in zip(first, second))
