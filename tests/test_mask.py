"""The mask family: the prototype mask loss against the pure-PyTorch reference and against
ultralytics' own single_mask_loss (values, both gradients), in every dtype, on every driver
(CPU, the CUDA kernels under the emulator, a GPU where there is one); adversarial boxes (on
pixel edges, fractional, outside the grid, empty, zero area), both ground-truth forms,
registration (gradcheck, opcheck, torch.compile, autocast), the gradient-in-the-forward
protocol, determinism, and argument errors."""
import pytest
import torch

import detloss_cuda.functional as DF
import detloss_cuda.reference as R
from conftest import DTYPES, OpSpy, assert_close_dtype, drivers, on_driver
from integration_common import _require


def scene(overlap, g, B=3, nm=8, H=12, W=10, P=14, N=6):
    """Random positives, boxes across and beyond the grid (integer and fractional edges)."""
    coef = torch.randn(P, nm, generator=g, dtype=torch.float64) * 0.7
    proto = torch.randn(B, nm, H, W, generator=g, dtype=torch.float64) * 0.7
    bi = torch.randint(0, B, (P,), generator=g)
    x = torch.rand(P, 2, generator=g, dtype=torch.float64) * (W + 4) - 2
    y = torch.rand(P, 2, generator=g, dtype=torch.float64) * (H + 4) - 2
    boxes = torch.stack([x.min(1).values, y.min(1).values, x.max(1).values, y.max(1).values], 1)
    boxes[::3] = boxes[::3].round()  # edges on pixel boundaries
    area = torch.rand(P, generator=g, dtype=torch.float64) * 0.5 + 0.05
    if overlap:
        masks = torch.randint(0, 4, (B, H, W), generator=g).double()
        mi = torch.randint(0, 3, (P,), generator=g)
    else:
        masks = (torch.rand(N, H, W, generator=g) < 0.4).double()
        mi = torch.randint(0, N, (P,), generator=g)
    return coef, proto, bi, boxes, area, masks, mi


def adversarial(overlap, g):
    """Boxes on pixel edges, a hair inside and outside them, covering the whole grid (and
    infinite), entirely outside it, empty (x1 >= x2), NaN, and one zero-width box of zero
    area (0/0: ultralytics' NaN) in image 2 only."""
    coef, proto, bi, _, area, masks, mi = scene(overlap, g, P=12)
    e = 1e-6
    boxes = torch.tensor([
        [0, 0, 10, 12], [2, 3, 5, 7], [2 - e, 3 + e, 5 + e, 7 - e], [2.5, 3.5, 2.6, 9.99],
        [-5, -5, 30, 40], [-float("inf"), 1, float("inf"), 2], [11, 0, 15, 12], [0, -4, 10, 0],
        [6, 6, 4, 8], [float("nan"), 0, 5, 5], [0.999, 0.001, 1.001, 11.999], [3, 3, 3, 9],
    ], dtype=torch.float64)
    bi = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 2])
    area[-1] = 0.0  # the zero-width box: ultralytics' area is 0 too
    return coef, proto, bi, boxes, area, masks, mi


def run(fn, coef, proto, rest, reduction, up=None, device="cpu", dtype=torch.float64):
    c = coef.detach().to(dtype).to(device).clone().requires_grad_()
    p = proto.detach().to(dtype).to(device).clone().requires_grad_()
    args = [t.to(device) for t in rest[:-1]]
    out = fn(c, p, *args, overlap=rest[-1], reduction=reduction)
    if up is None:
        up = torch.ones(()) if reduction != "none" else torch.linspace(0.5, 2, out.numel())
    gc, gp = torch.autograd.grad(out, (c, p), up.to(out.dtype).to(device))
    return out, gc, gp


def compare(case, dtype, driver, reduction, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    overlap = case.endswith("overlap")
    coef, proto, bi, boxes, area, masks, mi = (adversarial if case.startswith("adv") else scene)(overlap, g)
    # the reference takes the inputs as rounded to dtype, in float64
    coef, proto = coef.to(dtype).double(), proto.to(dtype).double()
    rest = (bi, boxes, area, masks, mi, overlap)
    # 'none': the upstream as representable in dtype, the same for both
    up = None if reduction != "none" else torch.linspace(0.5, 2, coef.shape[0]).to(dtype).double()
    ref = run(R.prototype_mask_loss, coef, proto, rest, reduction, up=up)
    with on_driver(driver) as (device, _):
        got = run(DF.prototype_mask_loss, coef, proto, rest, reduction, up=up, device=device,
                  dtype=dtype)
    for name, a, e in zip(("loss", "grad coef", "grad proto"), got, ref):
        assert a.dtype == dtype and a.shape == e.shape, name
        msg = f"{case} {dtype} {driver} {reduction}: {name}"
        nan = torch.isnan(e)
        assert torch.equal(torch.isnan(a.detach().cpu()), nan), msg + " (NaN pattern)"
        # a pixel's logit is a dot of nm terms and a positive's loss a sum over its box:
        # a budget of 2 formulas of rounding
        assert_close_dtype(a[~nan], e[~nan], dtype, msg, ops=2)


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["random overlap", "random masks", "adversarial overlap",
                                  "adversarial masks"])
def test_values_and_gradients_match_the_reference(case, dtype, driver):
    for reduction in ("mean", "sum", "none"):
        compare(case, dtype, driver, reduction)


def test_the_adversarial_scene_exercises_what_it_claims():
    """Not a vacuous comparison: the zero-area box makes image 2's gradients NaN (as
    ultralytics' inf·0 does), the other images' stay finite, the empty boxes give 0."""
    g = torch.Generator().manual_seed(0)
    coef, proto, bi, boxes, area, masks, mi = adversarial(True, g)
    loss, gc, gp = run(DF.prototype_mask_loss, coef, proto,
                       (bi, boxes, area, masks, mi, True), "none")
    assert torch.isnan(loss[-1]) and torch.isnan(gc[-1]).all() and torch.isnan(gp[2]).all()
    assert torch.isfinite(gp[:2]).all() and torch.isfinite(gc[:-1]).all()
    assert (loss[[6, 7, 8, 9]] == 0).all() and (gc[[6, 7, 8, 9]] == 0).all()
    assert (loss[[0, 1, 4, 5]] > 0).all()


def single_mask_loss_batch(coef, proto, bi, boxes, area, masks, mi, overlap):
    """ultralytics' own code, per image as calculate_segmentation_loss calls it."""
    from ultralytics.utils.loss import v8SegmentationLoss

    total = 0
    for b in range(proto.shape[0]):
        sel = bi == b
        if not sel.any():
            continue
        idx = mi[sel]
        gt = (masks[b] == (idx + 1).view(-1, 1, 1)).to(coef.dtype) if overlap else masks[idx]
        total = total + v8SegmentationLoss.single_mask_loss(gt, coef[sel], proto[b],
                                                            boxes[sel].clone(), area[sel])
    return total / coef.shape[0]


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("kind", ["random", "adversarial"])
def test_matches_ultralytics_single_mask_loss_in_float64(kind, overlap):
    _require("ultralytics")
    g = torch.Generator().manual_seed(3)
    coef, proto, bi, boxes, area, masks, mi = (adversarial if kind == "adversarial" else scene)(overlap, g)
    if kind == "adversarial":  # ultralytics' NaN spreads to the batch's sum: compared above
        coef, bi, boxes, area, mi = coef[:-1], bi[:-1], boxes[:-1], area[:-1], mi[:-1]
    rest = (bi, boxes, area, masks, mi, overlap)
    ours = run(DF.prototype_mask_loss, coef, proto, rest, "mean")
    theirs = run(lambda c, p, *a, overlap, reduction: single_mask_loss_batch(c, p, *a, overlap),
                 coef, proto, rest, "mean")
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    coef, proto, bi, boxes, area, masks, mi = scene(False, g, B=2, nm=3, H=5, W=4, P=4)
    masks = torch.rand(masks.shape, generator=g, dtype=torch.float64)  # soft targets too
    for reduction in ("mean", "none"):
        torch.autograd.gradcheck(
            lambda c, p: DF.prototype_mask_loss(c, p, bi, boxes, area, masks, mi, False, reduction),
            (coef.requires_grad_(), proto.requires_grad_()))


def test_opcheck():
    g = torch.Generator().manual_seed(2)
    coef, proto, bi, boxes, area, masks, mi = scene(True, g, B=2, nm=4, H=6, W=5, P=5)
    rest = (bi, boxes.float(), area.float(), masks, mi, True)
    for reduction in ("mean", "none"):
        args = (coef.float().requires_grad_(), proto.float().requires_grad_(), *rest, reduction)
        torch.library.opcheck(torch.ops.detloss.prototype_mask_loss.default, args)
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.detloss.prototype_mask_loss_with_grad.default, plain)
        up = torch.ones(()) if reduction == "mean" else torch.rand(5)
        torch.library.opcheck(torch.ops.detloss.prototype_mask_backward.default, (up, *plain))


def test_torch_compile_fullgraph():
    g = torch.Generator().manual_seed(4)
    coef, proto, bi, boxes, area, masks, mi = scene(True, g)
    coef, proto = coef.float(), proto.float()

    def step(c, p):
        return DF.prototype_mask_loss(c, p, bi, boxes.float(), area.float(), masks, mi) * 2

    c1, p1 = coef.clone().requires_grad_(), proto.clone().requires_grad_()
    c2, p2 = coef.clone().requires_grad_(), proto.clone().requires_grad_()
    eager = step(c1, p1)
    eager.backward()
    compiled = torch.compile(step, fullgraph=True)(c2, p2)
    compiled.backward()
    assert torch.equal(eager, compiled)
    assert torch.equal(c1.grad, c2.grad) and torch.equal(p1.grad, p2.grad)


def test_autocast_runs_in_float32():
    g = torch.Generator().manual_seed(5)
    coef, proto, bi, boxes, area, masks, mi = scene(True, g)
    c = coef.bfloat16().requires_grad_()
    p = proto.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DF.prototype_mask_loss(c, p, bi, boxes.float(), area.float(), masks, mi)
    assert out.dtype == torch.float32
    want = DF.prototype_mask_loss(c.detach().float(), p.detach().float(), bi, boxes.float(),
                                  area.float(), masks, mi)
    assert torch.equal(out.detach(), want)
    out.backward()
    assert c.grad.dtype == torch.bfloat16 and p.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("driver", drivers())
def test_kept_and_recomputed_gradients_are_the_same_bits(driver):
    """The forward computes the gradients (upstream 1, the mean's 1/P included); a retained
    graph's second backward recomputes them with the backward op: the same bits."""
    g = torch.Generator().manual_seed(6)
    coef, proto, bi, boxes, area, masks, mi = scene(True, g)
    with on_driver(driver) as (device, _):
        c = coef.float().to(device).requires_grad_()
        p = proto.float().to(device).requires_grad_()
        for reduction in ("mean", "sum", "none"):
            out = DF.prototype_mask_loss(c, p, bi.to(device), boxes.to(device), area.to(device),
                                         masks.to(device), mi.to(device), True, reduction)
            up = torch.full(out.shape, 0.37, device=device)
            first = torch.autograd.grad(out, (c, p), up, retain_graph=True)
            second = torch.autograd.grad(out, (c, p), up)
            assert all(torch.equal(a, b) for a, b in zip(first, second)), reduction


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_where_the_gradient_is_computed(reduction, driver):
    """Inference computes no gradient; 'mean'/'sum' compute both in the forward
    (*_with_grad) and the backward only scales them (no kernel of ours runs again); 'none'
    computes them in the backward (each positive's upstream is inside the prototypes' sum)."""
    g = torch.Generator().manual_seed(10)
    coef, proto, bi, boxes, area, masks, mi = scene(True, g)
    with on_driver(driver) as (device, ns):
        c = coef.float().to(device).requires_grad_()
        p = proto.float().to(device).requires_grad_()

        def f():
            return DF.prototype_mask_loss(c, p, bi, boxes, area, masks, mi, True, reduction)

        with torch.no_grad(), OpSpy() as spy:
            f()
        assert f"{ns}::prototype_mask_loss" in spy.ops
        assert f"{ns}::prototype_mask_loss_with_grad" not in spy.ops, spy.ops
        with OpSpy() as fwd:
            out = f()
        with OpSpy() as bwd:
            torch.autograd.grad(out, (c, p), torch.full(out.shape, 2.0))
    ours = [o for o in bwd.ops if o.startswith(f"{ns}::")]
    if reduction == "none":
        assert f"{ns}::prototype_mask_loss_with_grad" not in fwd.ops, fwd.ops
        assert ours.count(f"{ns}::prototype_mask_backward") == 1, bwd.ops
    else:
        assert f"{ns}::prototype_mask_loss_with_grad" in fwd.ops, fwd.ops
        assert not ours, bwd.ops


def test_deterministic_whatever_the_thread_count():
    g = torch.Generator().manual_seed(7)
    coef, proto, bi, boxes, area, masks, mi = scene(False, g, B=5, P=60, H=40, W=40)
    rest = (bi, boxes, area, masks, mi, False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(DF.prototype_mask_loss, coef.float(), proto.float(), rest, "sum", dtype=torch.float32)
        torch.set_num_threads(max(2, threads))
        many = run(DF.prototype_mask_loss, coef.float(), proto.float(), rest, "sum", dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_no_positives_and_images_without_positives():
    g = torch.Generator().manual_seed(8)
    coef, proto, bi, boxes, area, masks, mi = scene(True, g)
    for reduction in ("mean", "sum", "none"):
        out, gc, gp = run(DF.prototype_mask_loss, coef[:0], proto,
                          (bi[:0], boxes[:0], area[:0], masks, mi[:0], True), reduction)
        assert out.shape == ((0,) if reduction == "none" else ()) and (gp == 0).all()
        if reduction != "none":
            assert out.item() == 0  # the mean of nothing is 0, as elsewhere
    bi = torch.zeros_like(bi)  # every positive in image 0: images 1 and 2 get zero gradients
    _, _, gp = run(DF.prototype_mask_loss, coef, proto, (bi, boxes, area, masks, mi, True), "mean")
    assert (gp[1:] == 0).all() and (gp[0] != 0).any()


def _bad_calls():
    g = torch.Generator().manual_seed(9)
    coef, proto, bi, boxes, area, masks, mi = (t.float() if t.is_floating_point() else t
                                               for t in scene(True, g))
    ok = dict(coef=coef, proto=proto, batch_index=bi, boxes=boxes, area=area, masks=masks,
              mask_index=mi, positive=None)
    cases = [
        ("coef", coef[0, 0], ValueError, r"coef must have shape \[\.\.\., nm\]"),
        ("coef", coef[:, None], ValueError, r"batch_index must have coef's leading shape \[14, 1\]"),
        ("coef", coef.long(), TypeError, "coef must be a floating tensor"),
        ("coef", torch.zeros(14, 65), ValueError, r"nm .* must be in \[1, 64\]"),
        ("proto", proto.double(), TypeError, "proto must have coef's dtype"),
        ("proto", proto[:, :3], ValueError, r"proto must have shape \[B, nm, H, W\] with nm = 8"),
        ("batch_index", bi.float(), TypeError, "batch_index must be an int64 or int32"),
        ("batch_index", bi[:3], ValueError, r"batch_index must have coef's leading shape \[14\]"),
        ("batch_index", bi + 3, IndexError, r"batch_index\[0\] = \d+ is not an image of proto"),
        ("boxes", boxes[:, :3], ValueError, r"boxes must have shape \[\.\.\., 4\]"),
        ("area", area[None], ValueError, r"area must have coef's leading shape \[14\]"),
        ("positive", bi, TypeError, "positive must be a bool tensor"),
        ("positive", bi[:3] > 0, ValueError, r"positive must have coef's leading shape \[14\]"),
        ("masks", masks[:, :5], ValueError, r"masks must have shape \[B, H, W\] with H, W = 12, 10"),
        ("masks", masks[:2], ValueError, "one instance-index map per image"),
        ("mask_index", mi.double(), TypeError, "mask_index must be an int64 or int32"),
    ]
    return ok, cases


@pytest.mark.parametrize("case", range(16))
def test_bad_input_names_the_argument(case):
    ok, cases = _bad_calls()
    name, value, exc, match = cases[case]
    args = dict(ok, **{name: value})
    with pytest.raises(exc, match=match):
        DF.prototype_mask_loss(**args)


def test_bad_mask_row_and_reduction_and_non_tensors():
    ok, _ = _bad_calls()
    masks = torch.zeros(4, 12, 10)
    with pytest.raises(IndexError, match=r"mask_index\[\d+\] = \d+ is not a row of masks \(N = 4\)"):
        DF.prototype_mask_loss(**dict(ok, masks=masks, mask_index=ok["mask_index"] + 4), overlap=False)
    with pytest.raises(ValueError, match="reduction"):
        DF.prototype_mask_loss(**ok, reduction="avg")
    with pytest.raises(TypeError, match="area must be a torch.Tensor"):
        DF.prototype_mask_loss(**dict(ok, area=0.5))
    with pytest.raises(RuntimeError, match="boxes requires grad"):
        DF.prototype_mask_loss(**dict(ok, boxes=ok["boxes"].clone().requires_grad_()))


def test_out_of_range_index_on_the_cuda_kernels_is_nan_not_a_crash():
    """The CUDA drivers (under the emulator) do not synchronise to check indices: such a
    positive's loss and coefficient gradient are NaN, the others' are the CPU's."""
    from emulated_cuda import emulated

    ok, _ = _bad_calls()
    bi = ok["batch_index"].clone()
    bi[3] = 7
    c = ok["coef"].clone().requires_grad_()
    with emulated():
        out = DF.prototype_mask_loss(**dict(ok, coef=c, batch_index=bi), reduction="none")
        (gc,) = torch.autograd.grad(out.sum(), c)
    assert torch.isnan(out[3]) and torch.isnan(gc[3]).all()
    keep = torch.arange(14) != 3
    want = DF.prototype_mask_loss(**dict(ok, coef=ok["coef"][keep], batch_index=bi[keep],
                                         boxes=ok["boxes"][keep], area=ok["area"][keep],
                                         mask_index=ok["mask_index"][keep]), reduction="none")
    torch.testing.assert_close(out[keep].detach(), want)


def dense(coef, proto, bi, boxes, area, masks, mi, g, A=9):
    """The same positives as every anchor of a [B, A] batch (ultralytics' layout), with a
    `positive` mask, and junk (out-of-range indices, NaN boxes) at the other anchors."""
    B, P = proto.shape[0], coef.shape[0]
    slot = torch.full((B, A), -1)
    for p in range(P):  # each positive at a free anchor of its image, in order
        a = int((slot[bi[p]] < 0).nonzero()[0])
        slot[bi[p], a] = p
    keep = slot >= 0
    src = slot.clamp(min=0)
    junk = lambda t, v: torch.where(keep.view(B, A, *([1] * (t.dim() - 1))), t[src], v)  # noqa: E731
    where = [tuple(int(i) for i in (slot == p).nonzero()[0]) for p in range(P)]
    return (junk(coef, torch.full_like(coef[:1], 1e6).expand(1, -1)),
            torch.arange(B).view(B, 1).expand(B, A).clone(),
            junk(boxes, torch.tensor(float("nan"))), junk(area, torch.tensor(0.0)),
            junk(mi, torch.tensor(99)), keep, tuple(torch.tensor(w) for w in zip(*where)))


@pytest.mark.parametrize("driver", drivers())
@pytest.mark.parametrize("overlap", [True, False])
def test_positive_mask_equals_the_packed_positives(overlap, driver):
    """[B, A] with `positive`: the packed call's loss (every reduction, 'mean' dividing by the
    number of positives) and gradients; zero loss and gradient at the other anchors, whose
    indices and boxes (junk here) are never read."""
    g = torch.Generator().manual_seed(11)
    coef, proto, bi, boxes, area, masks, mi = scene(overlap, g, P=10)
    dc, dbi, dboxes, darea, dmi, keep, at = dense(coef, proto, bi, boxes, area, masks, mi, g)
    for reduction in ("mean", "sum", "none"):
        with on_driver(driver) as (device, _):
            packed = run(DF.prototype_mask_loss, coef, proto, (bi, boxes, area, masks, mi, overlap),
                         reduction, dtype=torch.float32)
            up = None if reduction != "none" else torch.linspace(0.5, 2, dc.shape[0] * dc.shape[1]).view(dc.shape[:2])
            c = dc.float().clone().requires_grad_()
            p = proto.float().clone().requires_grad_()
            out = DF.prototype_mask_loss(c, p, dbi, dboxes, darea, masks, dmi, overlap, reduction,
                                         positive=keep)
            if up is None:
                up = torch.ones(())
            gc, gp = torch.autograd.grad(out, (c, p), up)
        if reduction == "none":
            assert out.shape == keep.shape and (out[~keep] == 0).all()
            torch.testing.assert_close(out[at], packed[0].detach())
            up_packed = up[at]
            packed = run(DF.prototype_mask_loss, coef, proto, (bi, boxes, area, masks, mi, overlap),
                         reduction, up=up_packed, dtype=torch.float32)
        else:
            torch.testing.assert_close(out, packed[0])
        assert gc.shape == dc.shape and (gc[~keep] == 0).all()
        torch.testing.assert_close(gc[at], packed[1])
        torch.testing.assert_close(gp, packed[2])
    ref = R.prototype_mask_loss(dc, proto, dbi, dboxes, darea, masks, dmi, overlap, "mean", keep)
    want = R.prototype_mask_loss(coef, proto, bi, boxes, area, masks, mi, overlap, "mean")
    torch.testing.assert_close(ref, want)  # the reference's positive mask, too
