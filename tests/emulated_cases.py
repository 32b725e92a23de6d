"""What the emulated-CUDA tests share (tests/test_cuda_emulated.py): running a function on the
CPU kernels and on the emulated CUDA kernels, comparing the two by the dtype's tolerance, the
upstream gradients, and the classification and box inputs in every form and layout."""
import torch

import detloss_cuda.functional as DF
from detloss_cuda.verify import tolerance
from emulated_cuda import emulated


def both(fn):
    """fn() on the CPU kernels, then on the emulated CUDA kernels."""
    cpu = fn()
    with emulated():
        cuda = fn()
    return cpu, cuda


def close(cpu, cuda, dtype, what, strides=True):
    assert len(cpu) == len(cuda), what
    for i, (a, b) in enumerate(zip(cpu, cuda)):
        w = f"{what} [output {i}]"
        assert a.dtype == b.dtype and a.shape == b.shape, (w, a.dtype, b.dtype, a.shape, b.shape)
        if strides:
            assert a.stride() == b.stride(), (w, a.stride(), b.stride())
        if a.dtype in (torch.bool, torch.int64, torch.int32):
            assert torch.equal(a, b), w
            continue
        ad, bd = a.detach().double(), b.detach().double()
        rtol, atol = tolerance(ad, dtype)
        torch.testing.assert_close(bd, ad, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{w}\n{m}")


def upstreams(out, reduction):
    """Upstream gradients: 1 (loss.backward()) and one that is not 1."""
    if reduction == "none":
        g = torch.Generator().manual_seed(1)
        return [torch.ones_like(out),
                (torch.rand(out.shape, generator=g) + 0.5).to(out.dtype)]
    return [torch.ones((), dtype=out.dtype), torch.tensor(0.37, dtype=out.dtype)]


def loss_and_grads(f, inputs, reduction, up_index, retain=False):
    """The loss and the gradients of `inputs` for upstream gradient number `up_index`; with
    `retain`, also a second backward of the same graph, which must give the same bits."""
    out = f()
    diff = [t for t in inputs if t.requires_grad]
    if not diff:
        return (out,)
    up = upstreams(out, reduction)[up_index]
    grads = torch.autograd.grad(out, diff, up, retain_graph=retain)
    if retain:
        again = torch.autograd.grad(out, diff, up)
        for a, b in zip(grads, again):
            nan = torch.isnan(a)  # (NaN where the formula's is: the mask loss' zero area)
            assert torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan]), \
                "a retained graph's second backward changed the bits"
    return (out.detach(), *grads)


def cls_fn(kind, x, t, reduction, gamma=2.0, **kw):
    if kind == "bce":
        return DF.binary_cross_entropy_with_logits(x, t, reduction=reduction, **kw)
    if kind == "focal":
        return DF.sigmoid_focal_loss(x, t, gamma=gamma, reduction=reduction, **kw)
    if kind == "qfl":
        return DF.quality_focal_loss(x, t, gamma=gamma, reduction=reduction, **kw)
    return DF.varifocal_loss(x, t, gamma=gamma, reduction=reduction, **kw)


def cls_variants(kind, dtype, g):
    """(name, make() -> (x, target, kwargs)): each target form and operand layout."""
    A, C = 37, 5

    def logits(*shape, offset=0):
        base = (torch.randn(int(torch.tensor(shape).prod()) + offset, generator=g) * 3).to(dtype)
        return base[offset:].view(*shape)

    def labels(*shape, dtype_=torch.int64):
        # classes, background (-1, C, C + 2) and ignored (-100) anchors
        lab = torch.randint(0, C, shape, generator=g)
        r = torch.rand(shape, generator=g)
        lab[r < 0.3] = -1
        lab[(r >= 0.3) & (r < 0.4)] = C
        lab[(r >= 0.4) & (r < 0.45)] = C + 2
        lab[(r >= 0.45) & (r < 0.55)] = -100
        return lab.to(dtype_)

    dense_t = lambda *s: torch.rand(*s, generator=g).to(dtype)  # noqa: E731
    out = [
        ("dense", lambda: (logits(3, A, C), dense_t(3, A, C), {})),
        ("dense-unaligned", lambda: (logits(3, A, C, offset=1), dense_t(3, A, C), {})),
        ("dense-smoothing", lambda: (logits(3, A, C), dense_t(3, A, C), {"label_smoothing": 0.1})),
        ("index", lambda: (logits(3, A, C), labels(3, A), {})),
        ("index-int32-score", lambda: (logits(3, A, C), labels(3, A, dtype_=torch.int32),
                                       {"score": torch.rand(3, A, generator=g).to(dtype)})),
        ("index-ignore-7", lambda: (logits(3, A, C), labels(3, A).clamp(max=7), {"ignore_index": 7})),
        ("class-major", lambda: (logits(3, C, A).transpose(1, 2), labels(3, A),
                                 {"score": torch.rand(3, A, generator=g).to(dtype),
                                  "label_smoothing": 0.05})),
        ("class-major-unaligned", lambda: (logits(3, C, A, offset=3).transpose(1, 2), labels(3, A), {})),
        ("empty", lambda: (logits(0, C), dense_t(0, C), {})),
        ("empty-index", lambda: (logits(0, C), labels(0), {})),
    ]
    if kind == "bce":
        out.append(("dense-weights", lambda: (logits(3, A, C), dense_t(3, A, C),
                                              {"weight": dense_t(3, A, 1), "pos_weight": dense_t(C) + 0.5})))
        out.append(("dense-full-weight", lambda: (logits(3, A, C), dense_t(3, A, C),
                                                  {"weight": dense_t(3, A, C)})))
    else:
        out.append(("dense-weight", lambda: (logits(3, A, C), dense_t(3, A, C), {"weight": dense_t(C)})))
    if kind == "vfl":
        out.append(("dense-label", lambda: (logits(3, A, C), dense_t(3, A, C),
                                            {"label": torch.rand(3, A, C, generator=g) < 0.3})))
        out.append(("dense-label-unaligned", lambda: (
            logits(3, A, C), dense_t(3, A, C),
            {"label": (torch.rand(3 * A * C + 3, generator=g) < 0.3)[3:].view(3, A, C)})))
    return out


def boxes(shape, dtype, g, offset=0):
    n = int(torch.tensor(shape).prod()) if shape else 1
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 20 + 1
    t = torch.cat([xy, xy + wh], -1)
    p = t + torch.randn(n, 4, generator=g, dtype=torch.float64) * 4
    if offset:
        base = torch.zeros(4 * n + offset, dtype=torch.float64)
        base[offset:] = p.reshape(-1)
        p = base[offset:].view(n, 4)
    return p.to(dtype).view(*shape, 4), t.to(dtype).view(*shape, 4)


def rboxes(shape, dtype, g):
    """Rotated boxes (xywhr) and targets near them."""
    n = int(torch.tensor(shape).prod()) if shape else 1
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 20 + 1
    r = (torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1) * 3.2
    t = torch.cat([xy, wh, r], -1)
    p = t + torch.randn(n, 5, generator=g, dtype=torch.float64) * torch.tensor([3, 3, 2, 2, 0.3])
    p[:, 2:4] = p[:, 2:4].abs() + 0.1
    return p.to(dtype).view(*shape, 5), t.to(dtype).view(*shape, 5)
