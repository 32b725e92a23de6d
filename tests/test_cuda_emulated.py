"""The CUDA kernels, run: csrc/cuda's .cu files under the SIMT emulator (tests/emulated_cuda.py,
csrc/emu/simt.h), against the CPU kernels, through the public functions.

Every op and backward op, every family, kind and dtype, every reduction, dense / class-index /
class-major targets, ignore_index, score, label smoothing, broadcast operands, bin-major DFL
input, unaligned storage (the scalar tail), empty inputs, upstream gradients of 1 and not 1, a
retained graph's second backward, and sizes past kMaxBlocks x kBlock units (the grid-stride
loop wraps); the assigner on test_assign's scenes. The last test proves every __global__
instantiation compiled from csrc/cuda was launched.

What must agree how:
- values and gradients: within the dtype's tolerance (detloss_cuda.verify.TOL: both sides are
  within it of the float64 truth). Not bit for bit: the CPU kernels' SIMD exp/log (Sleef) and
  the host libm that the emulated kernels call round differently, by an ulp or so;
- bit for bit: the assigner's five outputs (the same scalar code and libm on both sides, no
  fused multiply-add), integer outputs and shapes and strides; every emulated reduction under
  every schedule (seeded block, warp and lane order) and from run to run; a retained graph's
  second backward and its first.
"""
import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.nn as DN
from assign_scenes import adversarial, pose_parts, rotated_scene, scene, seg_parts
from conftest import DTYPES
from emulated_cases import both, boxes, close, cls_fn, cls_variants, loss_and_grads, rboxes
from emulated_cuda import emu_ops, emulated, kernels

REDUCTIONS = ["none", "mean", "sum"]
RAN = set()  # the tests of this file that ran (the coverage test needs all of them)


@pytest.fixture(scope="module", autouse=True)
def emu():
    return emu_ops()


@pytest.fixture(autouse=True)
def _record(request):
    yield
    RAN.add(request.node.originalname)


# ------------------------------------------------------------------------ classification
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["bce", "focal", "qfl", "vfl"])
def test_cls(kind, dtype):
    g = torch.Generator().manual_seed(0)
    gammas = [2.0] if kind == "bce" else [2.0, 1.5, 0.0, 1.0]  # fp32 gamma = 2: its own kernels
    for name, make in cls_variants(kind, dtype, g):
        x0, t, kw = make()
        for gamma in gammas:
            for requires_grad in (False, True):
                for reduction in REDUCTIONS:
                    for up in ((0, 1) if requires_grad else (0,)):
                        x = x0.detach().clone() if x0.is_contiguous() else x0.detach()
                        x.requires_grad_(requires_grad)
                        cpu, cuda = both(lambda: loss_and_grads(
                            lambda: cls_fn(kind, x, t, reduction, gamma, **kw), [x], reduction, up,
                            retain=requires_grad and up == 1))
                        close(cpu, cuda, dtype, f"{kind} {name} gamma={gamma} grad={requires_grad} "
                                                f"{reduction} upstream#{up}")


def test_cls_backward_ops_directly():
    """The recomputing backward op (what a second backward runs), called as autograd would,
    for the index and the dense form."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 9, 6, generator=g)
    lab = torch.randint(-1, 6, (4, 9), generator=g)
    t = torch.rand(4, 9, 6, generator=g)
    for target in (lab, t):
        for red, up in (("none", torch.rand(4, 9, 6, generator=g)), ("mean", torch.tensor(2.5))):
            args = (x, target, None, None, None, "focal", 0.25, 2.0, red, None, 0.0, -100)
            cpu = torch.ops.detloss.cls_backward(up, *args)
            cuda = emu_ops().cls_backward(up, *args)
            close((cpu,), (cuda,), torch.float32, f"cls_backward {red}")


@pytest.mark.slow
def test_cls_grid_stride_wraps():
    """Past kMaxBlocks x kBlock units (1024 x 256 = 262144): each thread takes several units.
    fp32 (4 elements a unit) and fp16 (8) focal, dense and class-major with class indices, at
    ultralytics' shapes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8400, 80, generator=g)  # 336000 units of 4
    t = torch.rand(2, 8400, 80, generator=g)
    xg = x.clone().requires_grad_()
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.sigmoid_focal_loss(xg, t, reduction="mean"),
                                            [xg], "mean", 1))
    close(cpu, cuda, torch.float32, "focal fp32 dense 1.3M")
    xh = torch.randn(4, 80, 8400, generator=g).half().transpose(1, 2).requires_grad_()  # 336000 units of 8
    lab = torch.randint(-1, 80, (4, 8400), generator=g)
    cpu, cuda = both(lambda: loss_and_grads(
        lambda: DF.binary_cross_entropy_with_logits(xh, lab, reduction="sum"), [xh], "sum", 1))
    close(cpu, cuda, torch.float16, "bce fp16 class-major 2.7M")


# ---------------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_box_loss(kind, dtype):
    g = torch.Generator().manual_seed(0)
    variants = []
    p, t = boxes((5, 8), dtype, g)
    variants.append(("plain", p, t, None))
    p, t = boxes((5, 8), dtype, g, offset=1)
    variants.append(("unaligned", p, t, None))
    p, t = boxes((5, 8), dtype, g)
    variants.append(("broadcast-weight", p[:, :1].contiguous(), t,
                     torch.rand(5, 8, generator=g).to(dtype)))
    p, t = boxes((0,), dtype, g)
    variants.append(("empty", p, t, None))
    for name, p0, t0, w in variants:
        for fmt in ("xyxy", "xywh"):
            for need in ((), ("pred",), ("pred", "target")):
                for reduction in REDUCTIONS:
                    for up in ((0, 1) if need else (0,)):
                        p = p0.detach().clone().requires_grad_("pred" in need)
                        t = t0.detach().clone().requires_grad_("target" in need)
                        cpu, cuda = both(lambda: loss_and_grads(
                            lambda: DF.iou_loss(p, t, kind, fmt, reduction=reduction, weight=w),
                            [p, t], reduction, up, retain=bool(need) and up == 1))
                        close(cpu, cuda, dtype, f"{kind} {name} {fmt} {need} {reduction} #{up}")


@pytest.mark.slow
def test_box_grid_stride_wraps():
    """300000 pairs (> 262144), both gradients, a pair a unit."""
    g = torch.Generator().manual_seed(0)
    p, t = boxes((300000,), torch.float32, g)
    p.requires_grad_()
    t.requires_grad_()
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.iou_loss(p, t, "ciou", reduction="mean"),
                                            [p, t], "mean", 1))
    close(cpu, cuda, torch.float32, "ciou 300000 pairs")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_box_matrix(kind, dtype):
    g = torch.Generator().manual_seed(0)
    for fmt in ("xyxy", "xywh"):
        a, _ = boxes((37,), dtype, g)
        _, b = boxes((45,), dtype, g)
        cpu, cuda = both(lambda: (DF.box_iou_matrix(a, b, kind, fmt),))
        close(cpu, cuda, dtype, f"matrix {kind} {fmt}")
        a, _ = boxes((2, 70), dtype, g)  # batched; tiles cut at 32 both ways
        _, b = boxes((2, 33), dtype, g)
        cpu, cuda = both(lambda: (DF.box_iou_matrix(a, b, kind, fmt),))
        close(cpu, cuda, dtype, f"batched matrix {kind} {fmt}")
        cpu, cuda = both(lambda: (DF.box_iou_matrix(a[:, :0], b, kind, fmt),))
        close(cpu, cuda, dtype, f"empty matrix {kind} {fmt}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["probiou", "probiou_ciou"])
def test_rotated_box_loss(kind, dtype):
    """ProbIoU (rows of 5: scalar loads; the float gradient units held to 64 / 85 registers)."""
    g = torch.Generator().manual_seed(0)
    p0, t0 = rboxes((5, 8), dtype, g)
    w = torch.rand(5, 8, generator=g).to(dtype)
    variants = [("plain", p0, t0, None), ("broadcast-weight", p0[:, :1].contiguous(), t0, w),
                ("empty", p0[:0], t0[:0], None)]
    for name, pv, tv, wv in variants:
        for need in ((), ("pred",), ("pred", "target")):
            for reduction in REDUCTIONS:
                for floor in (0.0, 0.01):
                    p = pv.detach().clone().requires_grad_("pred" in need)
                    t = tv.detach().clone().requires_grad_("target" in need)
                    cpu, cuda = both(lambda: loss_and_grads(
                        lambda: DF.iou_loss(p, t, kind, "xywhr", reduction=reduction, weight=wv,
                                            floor=floor),
                        [p, t], reduction, 1 if need else 0, retain=bool(need)))
                    close(cpu, cuda, dtype, f"{kind} {name} {need} {reduction} floor={floor}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["probiou", "probiou_ciou"])
def test_rotated_box_matrix(kind, dtype):
    g = torch.Generator().manual_seed(0)
    a, _ = rboxes((37,), dtype, g)
    _, b = rboxes((45,), dtype, g)
    cpu, cuda = both(lambda: (DF.box_iou_matrix(a, b, kind, "xywhr"),))
    close(cpu, cuda, dtype, f"matrix {kind}")
    a, _ = rboxes((2, 70), dtype, g)  # batched; tiles cut at 32 both ways
    _, b = rboxes((2, 33), dtype, g)
    cpu, cuda = both(lambda: (DF.box_iou_matrix(a, b, kind, "xywhr", floor=0.01),))
    close(cpu, cuda, dtype, f"batched matrix {kind}")


# ---------------------------------------------------------------------------- distribution
BINS = [2, 7, 16, 17, 32, 33, 100, 128, 200, 256, 300, 1024]  # every (VPT, TPR) and the long walk


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bins", BINS)
def test_dfl(bins, dtype):
    g = torch.Generator().manual_seed(bins)
    rows = 37
    base = (torch.randn(rows * bins + 1, generator=g) * 2).to(dtype)
    layouts = [("contiguous", base[:-1].view(rows, bins)), ("unaligned", base[1:].view(rows, bins))]
    target = torch.rand(rows, generator=g) * (bins - 1)
    target[0], target[1] = 0.0, bins - 1.0  # both ends: the target's two bins at the edges
    weight = torch.rand(rows, generator=g).to(dtype)
    for name, z0 in layouts:
        for w in (None, weight):
            for requires_grad in (False, True):
                for reduction in REDUCTIONS:
                    for up in ((0, 1) if requires_grad else (0,)):
                        z = z0.detach().clone().requires_grad_(requires_grad)
                        cpu, cuda = both(lambda: loss_and_grads(
                            lambda: DF.distribution_focal_loss(z, target, reduction, weight=w), [z],
                            reduction, up, retain=requires_grad and up == 1))
                        close(cpu, cuda, dtype, f"dfl {bins} {name} w={w is not None} "
                                                f"grad={requires_grad} {reduction} #{up}")
        for retain in (False, True):
            z = z0.detach().clone().requires_grad_()
            cpu, cuda = both(lambda: loss_and_grads(lambda: DF.distribution_integral(z), [z], "none",
                                                    1, retain=retain))
            close(cpu, cuda, dtype, f"integral {bins} {name}")
    # D-FINE's split targets (left bin, right weight): both edges, a weight of 1 on the last
    # bin (translate_gt's clamp), a left bin out of range (a NaN row), in every kernel
    left = torch.randint(0, bins - 1, (rows,), generator=g).float()
    wr = torch.rand(rows, generator=g)
    left[:4], wr[:4] = torch.tensor([0.0, bins - 2.0, bins - 1.1, bins - 1.0]), torch.tensor([0.0, 1.0, 1.0, 0.5])
    for name, z0 in layouts:
        for requires_grad in (False, True):
            for reduction in REDUCTIONS:
                z = z0.detach().clone().requires_grad_(requires_grad)
                cpu, cuda = both(lambda: loss_and_grads(
                    lambda: DF.distribution_focal_loss(z, left, reduction, weight=weight, weight_right=wr),
                    [z], reduction, int(requires_grad)))
                close(cpu, cuda, dtype, f"dfl split {bins} {name} grad={requires_grad} {reduction}")
    empty = torch.zeros(0, bins, dtype=dtype, requires_grad=True)
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.distribution_focal_loss(
        empty, torch.zeros(0), reduction="mean"), [empty], "mean", 1))
    close(cpu, cuda, dtype, f"dfl {bins} empty")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_distribution_kl(dtype):
    """The distillation KL (DflKlUnit, DflKlGradUnit: a thread a row): rows of 2 to 1024 bins,
    an upstream per row, unaligned rows, a teacher equal to pred."""
    g = torch.Generator().manual_seed(1)
    for bins in (2, 33, 300, 1024):
        base = (torch.randn(37 * bins + 1, generator=g) * 3).to(dtype)
        u = (torch.randn(37, bins, generator=g) * 3).to(dtype)
        for z0 in (base[:-1].view(37, bins), base[1:].view(37, bins)):
            for teacher in (u, z0):
                w = torch.rand(37, generator=g).to(dtype)
                z = z0.detach().clone().requires_grad_()
                cpu, cuda = both(lambda: loss_and_grads(
                    lambda: DF.distribution_kl_loss(z, teacher.detach(), 5.0) * w, [z], "none", 1))
                close(cpu, cuda, dtype, f"kl {bins}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dfl_bin_major(dtype):
    """ultralytics' [B, 4R, A] box bins, permuted: the CPU reads them in place and writes the
    gradient in their strides; CUDA makes them rows (a copy) and returns contiguous gradients,
    as the fake kernel says (detloss_cuda/_ops.py)."""
    g = torch.Generator().manual_seed(0)
    head = (torch.randn(2, 64, 50, generator=g) * 2).to(dtype)
    z = head.permute(0, 2, 1).view(2, 50, 4, 16).detach().requires_grad_()
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.distribution_integral(z), [z], "none", 1))
    close(cpu, cuda, dtype, "integral bin-major", strides=False)
    assert cuda[1].is_contiguous() and cpu[1].stride() == z.stride()
    y = torch.rand(2, 50, 4, generator=g) * 15
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.distribution_focal_loss(z, y), [z], "mean", 1))
    close(cpu, cuda, dtype, "dfl bin-major")


@pytest.mark.slow
def test_dfl_grid_stride_wraps():
    """70000 rows of 16 bins: 280000 units of a 4-lane group (> 262144)."""
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(70000, 16, generator=g) * 2).requires_grad_()
    y = torch.rand(70000, generator=g) * 15
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.distribution_focal_loss(z, y), [z], "mean", 1))
    close(cpu, cuda, torch.float32, "dfl 70000 x 16")


# ------------------------------------------------------------------------------------ mask
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("overlap", [True, False])
def test_mask(overlap, dtype):
    """Both ground-truth forms, with and without the gradient, every reduction, upstreams of 1
    and not 1, a retained graph's second backward, the adversarial boxes (a zero area's NaN
    included), no positives, and an nm over the 32 coefficients ProtoGradUnit takes a pass."""
    from test_mask import adversarial, dense, scene

    g = torch.Generator().manual_seed(0)
    scenes = [("random", scene(overlap, g)), ("adversarial", adversarial(overlap, g)),
              ("nm 40", scene(overlap, g, nm=40, P=5))]
    c, p, bi, bx, ar, mk, mi = scenes[0][1]
    scenes.append(("empty", (c[:0], p, bi[:0], bx[:0], ar[:0], mk, mi[:0])))
    # every anchor of a [B, A] batch with a positive mask (junk at the others)
    dc, dbi, dbx, dar, dmi, keep, _ = dense(c, p, bi, bx, ar, mk, mi, g)
    scenes.append(("positive mask", (dc, p, dbi, dbx, dar, mk, dmi, keep)))
    scenes.append(("no positive", (dc, p, dbi, dbx, dar, mk, dmi, keep & False)))
    for name, (coef, proto, bi, boxes, area, masks, mi, *keep) in scenes:
        keep = keep[0] if keep else None
        for requires_grad in (False, True):
            for reduction in REDUCTIONS:
                for up in ((0, 1) if requires_grad else (0,)):
                    cf = coef.detach().to(dtype).clone().requires_grad_(requires_grad)
                    pr = proto.detach().to(dtype).clone().requires_grad_(requires_grad)
                    cpu, cuda = both(lambda: loss_and_grads(
                        lambda: DF.prototype_mask_loss(cf, pr, bi, boxes, area, masks, mi, overlap,
                                                       reduction, positive=keep),
                        [cf, pr], reduction, up, retain=requires_grad and up == 1))
                    close(cpu, cuda, dtype, f"mask {name} overlap={overlap} grad={requires_grad} "
                                            f"{reduction} #{up}")


@pytest.mark.slow
def test_mask_grid_stride_wraps():
    """2 x 370 x 370 prototype pixels: 273800 units of ProtoGradUnit (> 262144)."""
    g = torch.Generator().manual_seed(0)
    coef = torch.randn(6, 2, generator=g).requires_grad_()
    proto = torch.randn(2, 2, 370, 370, generator=g).requires_grad_()
    bi = torch.tensor([0, 1, 1, 0, 1, 1])
    boxes = torch.tensor([[0.0, 0, 20, 20], [350, 350, 370, 370], [100, 0, 110, 370],
                          [360, 0, 370, 5], [0, 365, 370, 370], [200, 200, 203, 204]])
    area = torch.full((6,), 0.01)
    masks = torch.randint(0, 3, (2, 370, 370), generator=g)
    mi = torch.tensor([0, 1, 0, 1, 1, 0])
    cpu, cuda = both(lambda: loss_and_grads(lambda: DF.prototype_mask_loss(
        coef, proto, bi, boxes, area, masks, mi), [coef, proto], "mean", 1))
    close(cpu, cuda, torch.float32, "mask 2 x 370 x 370")


# ------------------------------------------------------------------------------- assigner
def assign_both(inputs, **kw):
    cpu = DN.TaskAlignedAssigner(**kw)(*inputs)
    with emulated():
        cuda = DN.TaskAlignedAssigner(**kw)(*inputs)
    for i, (a, b) in enumerate(zip(cpu, cuda)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.equal(a, b), f"output {i}: {int((a != b).sum())} values differ ({kw})"


# ultralytics' settings, topk2, and lists longer than a warp (merged over several rounds)
KW = [dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0),
      dict(topk=7, topk2=1, alpha=0.5, beta=6.0), dict(topk=10, topk2=3, alpha=0.5, beta=6.0),
      dict(topk=64, topk2=40, alpha=0.5, beta=6.0)]


@pytest.mark.parametrize("score_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("box_dtype", [torch.float32, torch.float64], ids=str)
def test_assigner_random_scenes_bit_equal(box_dtype, score_dtype):
    for seed in range(3):
        s, p, a, lab, gt, m = scene(B=3, M=7, dtype=box_dtype, seed=seed, big=seed % 2 == 0)
        for kw in KW:
            assign_both((s.to(score_dtype), p, a, lab, gt, m), num_classes=5, **kw)


@pytest.mark.parametrize("kind", ["overlapping", "nested", "duplicates", "tiny", "cover_all",
                                  "outside", "no_boxes_in_one_image", "bad_predictions"])
def test_assigner_adversarial_scenes_bit_equal(kind):
    inputs = adversarial(kind)
    for kw in KW:
        assign_both(inputs, num_classes=5, **kw)


def test_assigner_logits_index_form_and_class_major_scores():
    s, p, a, lab, gt, m = scene(B=2, M=6, seed=5, big=True)
    logits = torch.logit(s)
    cm = logits.transpose(1, 2).contiguous().transpose(1, 2)  # a head's [B, C, A], permuted
    for scores in (logits, cm):
        cpu = DF_assign(scores, p, a, lab, gt, m)
        with emulated():
            cuda = DF_assign(scores, p, a, lab, gt, m)
        for x, y in zip(cpu, cuda):
            assert torch.equal(x, y)


def DF_assign(*inputs):
    from detloss_cuda.assign import task_aligned_assign

    r = task_aligned_assign(*inputs, topk=10, num_classes=5, alpha=0.5, scores_are_logits=True,
                            index=True)
    return (r.labels, r.scores, r.target_bboxes, r.fg_mask, r.target_gt_idx)


def nan_scene():
    """NaN anchor coordinates (in the middle of the x order and at its ends), a NaN predicted
    box and a NaN score: the anchors are sorted by x with NaN last on both devices, a NaN is
    never a candidate, a NaN metric counts as no metric."""
    s, p, a, lab, gt, m = scene(B=2, M=6, seed=7, big=True)
    a = a.clone()
    a[5, 0] = float("nan")
    a[200, 0] = float("nan")
    a[300, 1] = float("nan")
    a[-1, 0] = float("nan")
    p = p.clone()
    p[0, 40] = float("nan")
    s = s.clone()
    s[1, 77, :] = float("nan")
    return s, p, a, lab, gt, m


def test_assigner_nan_anchors_the_same_on_both_devices():
    inputs = nan_scene()
    for kw in KW:
        cpu = DN.TaskAlignedAssigner(num_classes=5, **kw)(*inputs)
        with emulated():
            cuda = DN.TaskAlignedAssigner(num_classes=5, **kw)(*inputs)
        for i, (x, y) in enumerate(zip(cpu, cuda)):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"output {i} ({kw}): {m}")
        assert not cpu[3][:, [5, 200, 300, a_last(inputs)]].any()  # NaN anchors: never foreground


def a_last(inputs):
    return inputs[2].shape[0] - 1


def seg_both(inputs, seg, **kw):
    cpu = DN.SegTaskAlignedAssigner(**kw)(*inputs, *seg)
    with emulated():
        cuda = DN.SegTaskAlignedAssigner(**kw)(*inputs, *seg)
    for i, (a, b) in enumerate(zip(cpu, cuda)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.equal(a, b), f"output {i}: {int((a != b).sum())} values differ ({kw})"


@pytest.mark.parametrize("box_dtype", [torch.float32, torch.float64], ids=str)
def test_mask_aware_assigner_bit_equal(box_dtype):
    """SegTaskAlignedAssigner's overlap: the 3·topk lists (SelectUnit on the box metric), the
    mask pixel counts a crop row a unit, the quotients; half coefficients and prototypes too
    (converted to the boxes' arithmetic), and lists longer than a warp (topk 21: 63 a box)."""
    for seed in range(2):
        inputs = scene(B=3, M=7, dtype=box_dtype, seed=seed, big=seed % 2 == 0)
        seg = seg_parts(inputs, seed=seed)
        for kw in KW[:4] + [dict(topk=21, alpha=0.5, beta=6.0)]:
            seg_both(inputs, seg, num_classes=5, **kw)
    half = tuple(t.half() if t.is_floating_point() else t for t in seg)
    seg_both(inputs, half, num_classes=5, **KW[0])


@pytest.mark.parametrize("masks", ["zero_coef", "full_coef", "empty_gt", "fractional"])
@pytest.mark.parametrize("kind", ["overlapping", "outside", "no_boxes_in_one_image", "bad_predictions"])
def test_mask_aware_assigner_adversarial_bit_equal(kind, masks):
    inputs = adversarial(kind)
    seg = seg_parts(inputs, kind=masks)
    for kw in (KW[0], KW[2]):
        seg_both(inputs, seg, num_classes=5, **kw)


@pytest.mark.parametrize("kind", [None, "angles", "near_square", "tiny", "large", "axis"])
def test_rotated_assigner_bit_equal(kind):
    """RotatedTaskAlignedAssigner's candidate test (the scan bounded by the corners) and
    ProbIoU; every box/score dtype pair for the random scene."""
    dtypes = [(b, s) for b in (torch.float32, torch.float64) for s in DTYPES] if kind is None else \
        [(torch.float32, torch.float32), (torch.float64, torch.float64)]
    for box_dtype, score_dtype in dtypes:
        s, p, a, lab, gt, m = rotated_scene(dtype=box_dtype, seed=1, kind=kind)
        inputs = (s.to(score_dtype), p, a, lab, gt, m)
        for kw in KW[:4]:
            cpu = DN.RotatedTaskAlignedAssigner(num_classes=5, **kw)(*inputs)
            with emulated():
                cuda = DN.RotatedTaskAlignedAssigner(num_classes=5, **kw)(*inputs)
            for i, (x, y) in enumerate(zip(cpu, cuda)):
                assert x.dtype == y.dtype and x.shape == y.shape, i
                assert torch.equal(x, y), f"output {i}: {int((x != y).sum())} values differ ({kw})"


@pytest.mark.parametrize("kind", [None, "fallback", "exact", "invisible"])
def test_pose_assigner_bit_equal(kind):
    """PoseTaskAlignedAssigner's gate (GateUnit, a warp a box) and OKS overlap; every
    box/score dtype pair for the random scene, the keypoints read from the YOLO26 head's
    layout (a strided view) once."""
    dtypes = [(b, s) for b in (torch.float32, torch.float64) for s in DTYPES] if kind is None else \
        [(torch.float32, torch.float32), (torch.float64, torch.float64)]
    for box_dtype, score_dtype in dtypes:
        inputs, st, pk, gk, sig = pose_parts(scene(dtype=box_dtype, seed=2, big=True), seed=2, kind=kind)
        inputs = (inputs[0].to(score_dtype), *inputs[1:])
        views = [pk]
        if kind is None and box_dtype == score_dtype == torch.float32:
            B, A, K = pk.shape[:3]
            head = torch.cat([pk, torch.zeros(B, A, K, 1)], -1).reshape(B, A, 3 * K).transpose(1, 2).contiguous()
            views.append(head.transpose(1, 2).view(B, A, K, 3)[..., :2])
        for kw, pd_kpts in [(kw, v) for kw in KW[:4] for v in views]:
            T = DN.PoseTaskAlignedAssigner(sig, num_classes=5, **kw)
            cpu = T(*inputs, st, pd_kpts=pd_kpts, gt_kpts=gk)
            with emulated():
                cuda = T(*inputs, st, pd_kpts=pd_kpts, gt_kpts=gk)
            for i, (x, y) in enumerate(zip(cpu, cuda)):
                assert x.dtype == y.dtype and x.shape == y.shape, i
                assert torch.equal(x, y), f"output {i}: {int((x != y).sum())} values differ ({kw})"


@pytest.mark.parametrize("kind,convention", [("softmax", "transformers"), ("focal", "transformers"),
                                             ("given", "transformers"), ("focal", "ultralytics"),
                                             ("softmax", "ultralytics")])
def test_match_cost_bit_equal(kind, convention):
    """The DETR matchers' cost (MatchCostUnit, a unit an entry): every dtype, both conventions
    and the given class cost, images without targets (their padding), NaN logits and
    infinite boxes (the dtype's largest value, or 0)."""
    from detloss_cuda.match import detr_match_cost

    g = torch.Generator().manual_seed(3)
    B, Q, C, sizes = 3, 20, 7, [4, 0, 9]
    for dtype in DTYPES:
        logits = (torch.randn(B, Q, 9 if kind == "given" else C, generator=g) * 3).to(dtype)
        pb = torch.cat([torch.rand(B, Q, 2, generator=g), torch.rand(B, Q, 2, generator=g) * 0.4], -1).to(dtype)
        tb = torch.cat([torch.rand(13, 2, generator=g), torch.rand(13, 2, generator=g) * 0.4], -1).to(dtype)
        lab = torch.randint(0, C, (13,), generator=g)
        logits[0, 2] = float("nan")
        pb[2, 5, 2] = float("inf")
        args = (logits, pb, lab, tb, sizes)
        kw = dict(class_kind=kind, class_cost=2.0, bbox_cost=5.0, giou_cost=2.0, alpha=0.3, gamma=1.5,
                  convention=convention)
        cpu = detr_match_cost(*args, **kw)
        assert (cpu[0, 2, :4] == (0 if convention == "ultralytics" else torch.finfo(dtype).max)).all()
        with emulated():
            cuda = detr_match_cost(*args, **kw)
        assert cuda.dtype == cpu.dtype and torch.equal(cpu, cuda), (dtype, int((cpu != cuda).sum()))


@pytest.mark.slow
def test_assigner_grid_stride_wraps():
    """32 images of 8400 anchors: 268800 per-anchor units (> 262144)."""
    s, p, a, lab, gt, m = scene(B=32, M=8, size=640, seed=1, pad=1)
    assign_both((s, p, a, lab, gt, m), num_classes=5, topk=10, topk2=4, alpha=0.5, beta=6.0)


# --------------------------------------------------------------------------- determinism
def test_reductions_same_bits_under_every_schedule():
    """The same bits from every block, warp and lane order, and from run to run: the grid size
    depends on the problem only, the partials are added in a fixed order."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300000, 5, generator=g).requires_grad_()  # 375000 units: 1024 blocks
    t = torch.rand(300000, 5, generator=g)
    lab = torch.randint(-100, 5, (300000,), generator=g)
    z = torch.randn(5000, 16, generator=g).requires_grad_()
    y = torch.rand(5000, generator=g) * 15
    p, tb = boxes((20000,), torch.float32, g)
    p.requires_grad_()

    def run():
        outs = []
        for f, inp in ((lambda: DF.sigmoid_focal_loss(x, t, reduction="mean"), x),
                       (lambda: DF.binary_cross_entropy_with_logits(x, lab, reduction="mean"), x),
                       (lambda: DF.distribution_focal_loss(z, y, reduction="sum"), z),
                       (lambda: DF.iou_loss(p, tb, "ciou", reduction="mean"), p)):
            out = f()
            outs += [out.detach(), *torch.autograd.grad(out, [inp], torch.tensor(0.37))]
        return outs

    ops = emu_ops()
    with emulated():
        results = []
        for seed in (0, 1, 2, 0):
            ops.emu_set_seed(seed)
            results.append(run())
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert torch.equal(a, b)


@pytest.mark.cuda
def test_the_emulator_against_the_gpu():
    """Where a GPU is: the same inputs through the emulated and the real CUDA kernels. Values
    within the dtype's tolerance; the sums' bits printed (the reduction order is the same,
    the elements may differ by the device's exp and log rounding otherwise than the host's
    libm, so equal bits are likely, not promised)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300000, 5, generator=g)
    t = torch.rand(300000, 5, generator=g)
    lab = torch.randint(-100, 5, (300000,), generator=g)
    z = torch.randn(5000, 16, generator=g)
    y = torch.rand(5000, generator=g) * 15
    p, tb = boxes((20000,), torch.float32, g)
    cases = {
        "focal mean": lambda d: DF.sigmoid_focal_loss(x.to(d), t.to(d), reduction="mean"),
        "bce index mean": lambda d: DF.binary_cross_entropy_with_logits(x.to(d), lab.to(d)),
        "dfl sum": lambda d: DF.distribution_focal_loss(z.to(d), y.to(d), reduction="sum"),
        "ciou mean": lambda d: DF.iou_loss(p.to(d), tb.to(d), "ciou"),
        "giou matrix": lambda d: DF.box_iou_matrix(p[:300].to(d), tb[:200].to(d), "giou"),
    }
    for name, f in cases.items():
        gpu = f("cuda").cpu()
        with emulated():
            emu = f("cpu")
        close((gpu,), (emu,), torch.float32, f"{name}: GPU vs emulated")
        if gpu.dim() == 0:
            print(f"{name}: GPU {gpu.item()!r}, emulated {emu.item()!r}, "
                  f"{'the same bits' if torch.equal(gpu, emu) else 'different bits'}")


# ------------------------------------------------------------------------------ coverage
def test_zz_every_kernel_instantiation_was_launched():
    """Last in this file: every __global__ instantiation compiled from csrc/cuda (the emulator
    registers each one at load, from the launch sites that instantiate it) was launched by the
    tests above. The same list as the CUDA build's, which tests/test_kernels.py checks."""
    def needs_gpu(f):
        return any(m.name == "cuda" for m in getattr(f, "pytestmark", []))

    missing_tests = {n for n, f in globals().items()
                     if n.startswith("test_") and not needs_gpu(f)} - RAN
    missing_tests.discard("test_zz_every_kernel_instantiation_was_launched")
    assert not missing_tests, f"run the whole file: coverage needs {sorted(missing_tests)}"
    ks = [k for k in kernels() if "::selftest::" not in k[1]]
    assert len(ks) > 250
    never = [name for _, name, launches in ks if launches == 0]
    assert not never, f"{len(never)} of {len(ks)} kernels never launched:\n" + "\n".join(never)
