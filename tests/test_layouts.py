"""Output layouts: the fake kernels (detloss_cuda/_ops.py) return what the real kernels return,
shapes, dtypes and strides, for every layout the integrations pass: class-major logits
(ultralytics' [B, C, A] head output, permuted), bin-major box bins ([B, 4R, A], permuted),
broadcast and expanded operands, strided views. `torch.library.opcheck` over every op,
forward, with-gradient and backward, on the CPU kernels (torch.ops.detloss) and on the CUDA
drivers (torch.ops.detloss_emu under the SIMT emulator; on a GPU, torch.ops.detloss on CUDA
tensors: cuda-marked). torch.compile plans the buffers it hands on from the fake strides: a
wrong one fails at run time (tests/test_compile_steps.py compiles whole loss steps)."""
import pytest
import torch

import detloss_cuda.functional as DF
from conftest import HAS_CUDA
from detloss_cuda import _ops

DRIVERS = ["cpu", "emulated"] + ([pytest.param("cuda", marks=pytest.mark.cuda)] if HAS_CUDA else [])


def ops_of(driver):
    if driver == "emulated":
        from emulated_cuda import emu_ops

        return emu_ops(), "cpu"
    return torch.ops.detloss, driver


def g():
    return torch.Generator().manual_seed(0)


def cls_cases(dev):
    gen = g()
    B, A, C = 2, 37, 5
    dense = torch.randn(B, A, C, generator=gen)
    t = torch.rand(B, A, C, generator=gen)
    lab = torch.randint(-1, C + 1, (B, A), generator=gen)
    lab[:, ::5] = -100
    cm = torch.randn(B, C, A, generator=gen).transpose(1, 2)  # class-major
    score = torch.rand(B, A, generator=gen)
    w = torch.rand(C, generator=gen)
    cases = {
        "dense": (dense, t, None, None, None),
        "dense-expanded-operands": (dense, t, w.expand(B, A, C), w.view(1, 1, C).expand(B, 1, C), None),
        "dense-strided-view": (torch.randn(B, 2 * A, C, generator=gen)[:, ::2], t, None, None, None),
        "dense-class-major-input": (cm, t, None, None, None),  # dense target: contiguous outputs
        "vfl-label": (dense, t, None, None, t > 0.5),
        "index": (dense, lab, None, None, None),
        "index-class-major": (cm, lab, None, None, None),
        "index-class-major-int32": (cm, lab.int(), None, None, None),
        "index-class-major-weight": (cm, lab, w, None, None),  # an operand: contiguous outputs
        "index-strided-view": (torch.randn(B, A, 2 * C, generator=gen)[..., ::2], lab, None, None, None),
    }
    for name, (x, tt, wt, pw, label) in cases.items():
        kind = "vfl" if label is not None else "focal"
        sc = score if tt.dtype in (torch.int32, torch.int64) and "strided" not in name else None
        for red in ("none", "mean"):
            yield f"{name}-{red}", tuple(
                v.to(dev) if isinstance(v, torch.Tensor) else v
                for v in (x, tt, wt, pw, label, kind, 0.25 if kind == "focal" else 0.75, 2.0, red, sc,
                          0.0, -100))


@pytest.mark.parametrize("driver", DRIVERS)
def test_cls_layouts(driver):
    ops, dev = ops_of(driver)
    for name, args in cls_cases(dev):
        for op in (ops.cls_loss, ops.cls_loss_with_grad):
            torch.library.opcheck(op.default, args)
        up = torch.rand(args[0].shape, device=dev) if args[8] == "none" else torch.tensor(1.5, device=dev)
        torch.library.opcheck(ops.cls_backward.default, (up, *args))
        if args[8] == "none":  # the C++ rule: input's strides for class-major logits, else contiguous
            out = ops.cls_loss(*args)
            cm = _ops.cls_class_major(args[0], args[1], args[2], args[3])
            assert cm == (name.startswith("index-class-major") and "weight" not in name), name
            assert out.stride() == args[0].stride() if cm else out.is_contiguous(), name


def box_cases(dev):
    gen = g()
    xy = torch.rand(5, 8, 2, generator=gen) * 40
    t = torch.cat([xy, xy + torch.rand(5, 8, 2, generator=gen) * 20 + 1], -1)
    p = t + torch.randn(5, 8, 4, generator=gen)
    w = torch.rand(5, 1, generator=gen)
    cases = {
        "plain": (p, t, None),
        "broadcast-pred": (p[:, :1], t, None),
        "expanded-weight": (p, t, w.expand(5, 8)),
        "strided-view": (torch.cat([p, p], 1)[:, ::2], t, None),
        "expanded-target": (p, t[:1].expand(5, 8, 4), None),
    }
    for name, (pp, tt, ww) in cases.items():
        for fmt in ("xyxy", "xywh"):
            yield f"{name}-{fmt}", tuple(v.to(dev) if isinstance(v, torch.Tensor) else v
                                        for v in (pp, tt, ww, "ciou", fmt, 1e-7, "none"))


@pytest.mark.parametrize("driver", DRIVERS)
def test_box_layouts(driver):
    ops, dev = ops_of(driver)
    for name, args in box_cases(dev):
        torch.library.opcheck(ops.box_loss.default, args)
        for mask in ([True, False], [True, True]):
            torch.library.opcheck(ops.box_loss_with_grad.default, (*args, mask))
            shape = torch.broadcast_shapes(args[0].shape[:-1], args[1].shape[:-1])
            torch.library.opcheck(ops.box_backward.default,
                                  (torch.rand(shape, device=dev), *args, mask))
    b1 = torch.rand(2, 70, 4, generator=g()).to(dev) * 10
    b1[..., 2:] += b1[..., :2]
    torch.library.opcheck(ops.box_iou_matrix.default, (b1, b1[:, ::3], "giou", "xyxy", 1e-7))
    torch.library.opcheck(ops.box_iou_matrix.default, (b1[0], b1[1, :9], "iou", "xywh", 0.0))


def dfl_cases(dev):
    gen = g()
    head = torch.randn(2, 64, 50, generator=gen)
    cases = {
        "rows": torch.randn(100, 16, generator=gen),
        "bin-major": head.permute(0, 2, 1).view(2, 50, 4, 16),  # ultralytics' box bins
        "strided-view": torch.randn(100, 32, generator=gen)[:, ::2],
        "long-rows": torch.randn(10, 300, generator=gen),
    }
    for name, z in cases.items():
        yield name, z.to(dev)


@pytest.mark.parametrize("driver", DRIVERS)
def test_dfl_layouts(driver):
    ops, dev = ops_of(driver)
    for name, z in dfl_cases(dev):
        R = z.shape[-1]
        y = (torch.rand(z.shape[:-1], generator=g()) * (R - 1)).to(dev)
        w = torch.rand(z.shape[:-2] + (1,), generator=g()).expand(z.shape[:-1]).to(dev) \
            if z.dim() > 2 else None
        for red in ("none", "sum"):
            torch.library.opcheck(ops.dfl_loss.default, (z, y, w, red))
            torch.library.opcheck(ops.dfl_loss_with_grad.default, (z, y, w, red))
            _, stats = ops.dfl_loss(z, y, w, red)
            up = torch.rand(z.shape[:-1], device=dev) if red == "none" else torch.tensor(2.0, device=dev)
            torch.library.opcheck(ops.dfl_backward.default, (up, z, y, stats, w, red))
        torch.library.opcheck(ops.dfl_integral.default, (z,))
        _, stats = ops.dfl_integral(z)
        torch.library.opcheck(ops.dfl_integral_backward.default,
                              (torch.rand(z.shape[:-1], device=dev), z, stats))
        gz = ops.dfl_integral_backward(torch.rand(z.shape[:-1], device=dev), z, stats)
        kept = dev == "cpu" and driver != "emulated" and name == "bin-major"
        assert _ops.dfl_keeps_bin_major(z, lambda t: "cuda" if driver != "cpu" else t.device.type) == kept
        assert (gz.stride() == z.stride()) if kept else gz.is_contiguous(), name


@pytest.mark.parametrize("driver", DRIVERS)
def test_assigner_layouts(driver):
    ops, dev = ops_of(driver)
    from assign_scenes import scene

    s, p, a, lab, gt, m = (t.to(dev) for t in scene(B=2, M=4, pad=1))
    cm = s.transpose(1, 2).contiguous().transpose(1, 2)  # a head's [B, C, A], permuted
    for scores in (s, cm, torch.logit(s)):
        torch.library.opcheck(ops.tal_assign.default,
                              (scores, p, a, lab, gt, m, 10, 3, 0.5, 6.0, 16.0, 1e-9, False))


@pytest.mark.parametrize("driver", DRIVERS)
def test_rotated_assigner_layouts(driver):
    ops, dev = ops_of(driver)
    from assign_scenes import rotated_scene

    s, p, a, lab, gt, m = (t.to(dev) for t in rotated_scene(B=2, M=4, pad=1))
    cm = s.transpose(1, 2).contiguous().transpose(1, 2)  # a head's [B, C, A], permuted
    for scores in (s, cm):
        torch.library.opcheck(ops.tal_assign_rotated.default,
                              (scores, p, a, lab, gt, m, 10, 3, 0.5, 6.0, 16.0, 1e-9, False))


@pytest.mark.parametrize("driver", DRIVERS)
def test_mask_aware_assigner_layouts(driver):
    """ultralytics' permuted [B, nm, A] coefficients, channels-last and strided prototypes,
    a [B] scale; the same outputs as from contiguous inputs."""
    ops, dev = ops_of(driver)
    from assign_scenes import scene, seg_parts

    inputs = tuple(t.to(dev) for t in scene(B=2, M=4, pad=1))
    coef, scale, proto, gm = (t.to(dev) for t in seg_parts(inputs))
    want = ops.tal_assign_seg(*inputs, coef.contiguous(), scale, proto, gm, 10, 3, 0.5, 6.0,
                              16.0, 1e-9, False)
    wide = torch.zeros(*proto.shape[:-1], 2 * proto.shape[-1], device=dev)
    wide[..., ::2] = proto
    for c, sc, pr in ((coef, scale, proto), (coef, scale.view(-1), proto.to(memory_format=torch.channels_last)),
                      (coef.contiguous(), scale, wide[..., ::2])):
        args = (*inputs, c, sc, pr, gm, 10, 3, 0.5, 6.0, 16.0, 1e-9, False)
        torch.library.opcheck(ops.tal_assign_seg.default, args)
        for x, y in zip(want, ops.tal_assign_seg(*args)):
            assert torch.equal(x, y)


@pytest.mark.parametrize("driver", DRIVERS)
def test_mask_layouts(driver):
    """Contiguous gradients whatever the inputs' strides: a transposed coef view, channels-last
    and strided prototypes, int32 indices, integer and bool masks."""
    ops, dev = ops_of(driver)
    gen = g()
    P, nm, B, H, W = 7, 4, 2, 6, 5
    coef = torch.randn(P, nm, generator=gen)
    proto = torch.randn(B, nm, H, W, generator=gen)
    bi = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    boxes = torch.tensor([[0.0, 0, 5, 6], [1, 1, 3, 4], [0.5, 2, 4.5, 6], [2, 0, 3, 1],
                          [-1, -1, 9, 9], [3, 3, 2, 5], [1, 2, 4, 3]])
    area = torch.rand(P, generator=gen) + 0.1
    index = torch.randint(0, 3, (B, H, W), generator=gen)
    mi = torch.randint(0, 2, (P,), generator=gen)
    cases = {
        "contiguous": (coef, proto, bi, index.float(), mi, True),
        "coef-transposed-view": (coef.t().contiguous().t(), proto, bi, index.float(), mi, True),
        "proto-channels-last": (coef, proto.to(memory_format=torch.channels_last), bi, index, mi, True),
        "proto-strided": (coef, torch.randn(B, nm, H, 2 * W, generator=gen)[..., ::2], bi.int(),
                          index.to(torch.uint8), mi.int(), True),
        "masks-rows": (coef, proto, bi, (index > 0)[[0, 1, 1]], torch.tensor([0, 1, 2, 0, 2, 1, 0]),
                       False),
        # every anchor of a batch, ultralytics' [B, A, nm] (permuted from its head) and fg_mask
        "anchors-positive": (torch.randn(B, nm, 7, generator=gen).permute(0, 2, 1),
                             proto, torch.arange(B).view(B, 1).expand(B, 7), index.float(),
                             mi[:B * 7 // 2 + 1].repeat(2)[:B * 7].view(B, 7), True),
    }
    for name, (c, p, b, m, i, overlap) in cases.items():
        dense = c.dim() == 3
        keep = torch.rand(c.shape[:-1], generator=gen) < 0.5 if dense else None
        bx = boxes[:7].repeat(2, 1).view(B, 7, 4) if dense else boxes
        ar = area[:7].repeat(2).view(B, 7) if dense else area
        for red in ("none", "mean"):
            args = tuple(v.to(dev) if isinstance(v, torch.Tensor) else v
                         for v in (c, p, b, bx, ar, m, i, overlap, red, keep))
            torch.library.opcheck(ops.prototype_mask_loss.default, args)
            torch.library.opcheck(ops.prototype_mask_loss_with_grad.default, args)
            up = torch.rand(c.shape[:-1], device=dev) if red == "none" else torch.tensor(2.0, device=dev)
            torch.library.opcheck(ops.prototype_mask_backward.default, (up, *args))
            _, gc, gp = ops.prototype_mask_loss_with_grad(*args)
            assert gc.is_contiguous() and gp.is_contiguous(), name
            assert gc.shape == c.shape and gp.shape == p.shape, name


def test_the_issue_snippet_compiles_and_equals_eager():
    """Class-major logits and class indices, as ultralytics' fused step passes them: every
    reduction and every kind, fullgraph, loss and gradient equal to eager."""
    for fn in (DF.binary_cross_entropy_with_logits, DF.sigmoid_focal_loss, DF.quality_focal_loss,
               DF.varifocal_loss):
        for red in ("none", "sum", "mean"):
            x = torch.randn(2, 5, 64, generator=g()).permute(0, 2, 1).requires_grad_()
            lab = torch.randint(0, 6, (2, 64), generator=g())
            torch._dynamo.reset()  # (12 specialisations of one lambda pass the recompile limit)
            f = torch.compile(lambda x, l: fn(x, l, reduction=red), fullgraph=True)
            out = f(x, lab)
            (gc,) = torch.autograd.grad(out.sum(), x)
            eager = fn(x, lab, reduction=red)
            (ge,) = torch.autograd.grad(eager.sum(), x)
            assert torch.equal(out, eager) and torch.equal(gc, ge), (fn.__name__, red)
            assert out.stride() == eager.stride() and gc.stride() == x.stride()
