"""The conditions a CUDA training run puts the ops under (issue 15): CUDA graphs, non-default
streams, a second device, AMP with GradScaler (fp16) and bf16 autocast, and
torch.compile(mode="reduce-overhead") (which captures CUDA graphs itself). Every test here is
cuda-marked: written for and run by bench/gpu_check.sh; skipped where no GPU is.

Each compares against the same computation done plainly (eager, default stream, fp32)."""
import pytest
import torch

import detloss_cuda.functional as DF
from conftest import HAS_CUDA

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here: compiled, not run")]

C, R = 80, 16


def _inputs(n=4096, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, generator=g) * 2
    lab = torch.randint(0, C + 1, (n,), generator=g)
    score = torch.rand(n, generator=g)
    xy = torch.rand(n, 2, generator=g) * 100
    tb = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 1], -1)
    pb = tb + torch.randn(n, 4, generator=g)
    z = torch.randn(n, 4, R, generator=g)
    dist = torch.rand(n, 4, generator=g) * (R - 1)
    return [t.to(device) for t in (x, lab, score, pb, tb, z, dist)]


def _loss(x, lab, score, pb, tb, z, dist):
    """A detector's loss step: VFL on class indices, CIoU, DFL (and the integral)."""
    fg = (lab < C).float()
    cls = DF.varifocal_loss(x, lab, score=score, reduction="sum")
    box = (DF.iou_loss(pb, tb, "ciou", reduction="none") * fg).sum()
    dfl = (DF.distribution_focal_loss(z, dist, reduction="none").mean(-1) * fg).sum()
    reg = DF.distribution_integral(z).mean()
    return (cls + box + dfl) / fg.sum().clamp(min=1) + reg


def _step(x, pb, z, *rest):
    """Loss and gradients w.r.t. the three differentiable inputs."""
    x, pb, z = (t.detach().requires_grad_() for t in (x, pb, z))
    lab, score, tb, dist = rest
    loss = _loss(x, lab, score, pb, tb, z, dist)
    grads = torch.autograd.grad(loss, (x, pb, z))
    return loss.detach(), grads


def _split(inputs):
    x, lab, score, pb, tb, z, dist = inputs
    return (x, pb, z), (lab, score, tb, dist)


def _assert_same(a, b, exact=True):
    for u, v in zip(a, b):
        if exact:
            assert torch.equal(u, v)
        else:
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_cuda_graph_capture_and_replay_with_new_inputs():
    """Forward and backward captured once into a CUDA graph (no host synchronisation, no
    allocation outside the graph's pool), then replayed on new inputs copied into the static
    tensors: each replay equals an eager step on those inputs, bit for bit (same kernels,
    same launch configuration, deterministic sums)."""
    static_in = _inputs(seed=0)
    (x, pb, z), rest = _split(static_in)
    x, pb, z = (t.clone().requires_grad_() for t in (x, pb, z))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as torch's docs require
        for _ in range(3):
            loss = _loss(x, rest[0], rest[1], pb, rest[2], z, rest[3])
            torch.autograd.grad(loss, (x, pb, z))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _loss(x, rest[0], rest[1], pb, rest[2], z, rest[3])
        static_grads = torch.autograd.grad(static_loss, (x, pb, z))
    for seed in (1, 2, 3):
        new = _inputs(seed=seed)
        (nx, npb, nz), nrest = _split(new)
        with torch.no_grad():
            for dst, src in zip((x, pb, z) + tuple(rest), (nx, npb, nz) + tuple(nrest)):
                dst.copy_(src)
        graph.replay()
        want_loss, want_grads = _step(nx, npb, nz, *nrest)
        torch.cuda.synchronize()
        assert torch.equal(static_loss, want_loss), seed
        _assert_same(static_grads, want_grads)


def test_non_default_stream():
    """The ops launch on the current stream: run on a side stream (inputs made on the default
    stream, handed over with wait_stream and record_stream), the results equal the default
    stream's, and nothing races (the next reader waits for the side stream)."""
    inputs = _inputs(n=1 << 16, seed=4)
    want_loss, want_grads = _step(*_split(inputs)[0], *_split(inputs)[1])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for t in inputs:
            t.record_stream(side)
        loss, grads = _step(*_split(inputs)[0], *_split(inputs)[1])
        # a kernel queued right behind, on the same stream: must see finished results
        total = loss + sum(g.sum() for g in grads)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(loss, want_loss)
    _assert_same(grads, want_grads)
    assert torch.isfinite(total)


@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="one GPU here")
def test_second_device():
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on the tensors' device (a
    device guard), with results equal to cuda:0's."""
    want_loss, want_grads = _step(*_split(_inputs(seed=5))[0], *_split(_inputs(seed=5))[1])
    with torch.cuda.device(0):
        ins = _inputs(seed=5, device="cuda:1")
        loss, grads = _step(*_split(ins)[0], *_split(ins)[1])
    assert loss.device == torch.device("cuda:1")
    torch.testing.assert_close(loss.cpu(), want_loss.cpu(), rtol=0, atol=0)
    _assert_same([g.cpu() for g in grads], [g.cpu() for g in want_grads])


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.SiLU())
        self.cls = torch.nn.Linear(128, C)
        self.box = torch.nn.Linear(128, 4)
        self.dist = torch.nn.Linear(128, 4 * R)

    def forward(self, f, anchors):
        h = self.body(f)
        d = self.box(h).exp()  # ltrb distances of each anchor's box
        boxes = torch.cat([anchors - d[:, :2], anchors + d[:, 2:]], -1)
        return self.cls(h), boxes, self.dist(h).view(-1, 4, R)


def _train(dtype, steps=5):
    """A few optimiser steps of a small head with the fused losses; AMP (autocast to `dtype`,
    GradScaler for fp16) or plain fp32 for dtype=None."""
    torch.manual_seed(0)
    head = _Head().cuda()
    opt = torch.optim.SGD(head.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    g = torch.Generator().manual_seed(6)
    f = torch.randn(2048, 32, generator=g).cuda()
    anchors = (torch.rand(2048, 2, generator=g) * 100).cuda()
    _, lab, score, _, tb, _, dist = _inputs(n=2048, seed=7)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits, boxes, z = head(f, anchors)
            if dtype is not None:
                assert logits.dtype == dtype  # the head runs in the autocast dtype ...
            loss = _loss(logits, lab, score, boxes, tb, z, dist)
            assert loss.dtype == torch.float32  # ... the losses in float32 (README, Numerics)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    return losses, [p.detach().float() for p in head.parameters()]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_amp_training_step(dtype):
    """fp16 with GradScaler and bf16 autocast: finite losses that decrease as the fp32 run's
    do, and parameters within the autocast dtype's reach of the fp32 run's."""
    ref_losses, ref_params = _train(None)
    losses, params = _train(dtype)
    assert all(map(lambda v: v == v and abs(v) < float("inf"), losses)), losses
    assert losses[-1] < losses[0]
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3  # the head's matmuls in 8/11-bit mantissas
    for a, b in zip(losses, ref_losses):
        assert abs(a - b) <= tol * abs(b) + tol, (losses, ref_losses)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


def test_compile_reduce_overhead_loss_step():
    """torch.compile(mode='reduce-overhead'): Inductor captures the loss step (the ops and
    the glue around them) and its backward in CUDA graphs; calls with new inputs equal eager."""
    compiled = torch.compile(_loss, mode="reduce-overhead")
    for seed in (8, 9, 10, 11):
        torch.compiler.cudagraph_mark_step_begin()
        (x, pb, z), rest = _split(_inputs(seed=seed))
        leaves = [t.clone().requires_grad_() for t in (x, pb, z)]
        loss = compiled(leaves[0], rest[0], rest[1], leaves[1], rest[2], leaves[2], rest[3])
        grads = torch.autograd.grad(loss, leaves)
        got = [loss.detach().clone()] + [g.clone() for g in grads]  # the graph's pool is reused
        want_loss, want_grads = _step(x, pb, z, *rest)
        _assert_same(got, [want_loss, *want_grads], exact=False)
