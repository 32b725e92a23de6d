"""The DETR matchers' fused cost (detloss_cuda.match.detr_match_cost) against the libraries'
cost blocks, and the routed matchers (transformers' HungarianMatcher, Deformable DETR's,
RT-DETR's, LW-DETR's) against the libraries' own: the same matchings where the optimum is
unique, the same total cost where it is not; NaN/inf handling; errors; opcheck."""
import pytest
import torch

from detloss_cuda.match import detr_match_cost, hungarian_match, solve

T = pytest.importorskip("transformers.loss.loss_for_object_detection")
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher  # noqa: E402
from transformers.loss.loss_lw_detr import LwDetrHungarianMatcher  # noqa: E402
from transformers.loss.loss_rt_detr import RTDetrHungarianMatcher  # noqa: E402

SIZES = [3, 0, 7, 5]


def scene(B=4, Q=30, C=12, sizes=SIZES, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, Q, C, generator=g, dtype=torch.float64) * 2
    box = lambda n: torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64),
                               torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02], -1)
    pb = box(B * Q).view(B, Q, 4)
    targets = [{"class_labels": torch.randint(0, C, (n,), generator=g), "boxes": box(n).to(dtype)}
                for n in sizes]
    return logits.to(dtype), pb.to(dtype), targets


def library_blocks(logits, pb, targets, kind, wc=1.0, wb=1.0, wg=1.0, alpha=0.25, gamma=2.0):
    """The libraries' cost, as transformers computes it, cut into each image's block."""
    B, Q = logits.shape[:2]
    tid = torch.cat([t["class_labels"] for t in targets])
    tb = torch.cat([t["boxes"] for t in targets])
    out_bbox = pb.flatten(0, 1)
    if kind == "softmax":
        cc = -logits.flatten(0, 1).softmax(-1)[:, tid]
    else:
        p = logits.flatten(0, 1).sigmoid()
        neg = (1 - alpha) * (p ** gamma) * (-(1 - p + 1e-8).log())
        pos = alpha * ((1 - p) ** gamma) * (-(p + 1e-8).log())
        cc = pos[:, tid] - neg[:, tid]
    giou = T.generalized_box_iou(T.center_to_corners_format(out_bbox), T.center_to_corners_format(tb))
    c = wb * torch.cdist(out_bbox, tb, p=1) + wc * cc + wg * -giou
    m = torch.finfo(c.dtype).max
    c = torch.nan_to_num(c, nan=m, posinf=m, neginf=m).view(B, Q, -1)
    sizes = [len(t["boxes"]) for t in targets]
    return [blk[b] for b, blk in enumerate(c.split(sizes, -1))]


def ours(logits, pb, targets, kind, **kw):
    sizes = [len(t["boxes"]) for t in targets]
    return detr_match_cost(logits, pb, torch.cat([t["class_labels"] for t in targets]),
                           torch.cat([t["boxes"] for t in targets]), sizes, class_kind=kind, **kw)


@pytest.mark.parametrize("kind", ["softmax", "focal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cost_blocks_are_the_librarys(kind, dtype):
    """Each image's block equals the library's (float64: to 1e-15 relative; float32: a few
    ulp of the sum's terms, exp/log of libm vs torch's), the padding 0."""
    kw = dict(class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)
    for seed in range(3):
        logits, pb, targets = scene(dtype=dtype, seed=seed)
        cost = ours(logits, pb, targets, kind, **kw)
        assert cost.shape == (4, 30, 7) and cost.dtype == dtype
        ref = library_blocks(logits, pb, targets, kind, wc=2.0, wb=5.0, wg=2.0)
        for b, n in enumerate(SIZES):
            tol = dict(rtol=1e-14, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)
            torch.testing.assert_close(cost[b, :, :n], ref[b], **tol)
            assert (cost[b, :, n:] == 0).all()


def test_focal_parameters_and_gamma_powers():
    logits, pb, targets = scene(dtype=torch.float64, seed=4)
    for alpha, gamma in ((0.25, 2.0), (0.3, 1.0), (0.5, 1.5), (0.1, 0.0)):
        cost = ours(logits, pb, targets, "focal", alpha=alpha, gamma=gamma)
        ref = library_blocks(logits, pb, targets, "focal", alpha=alpha, gamma=gamma)
        for b, n in enumerate(SIZES):
            torch.testing.assert_close(cost[b, :, :n], ref[b], rtol=1e-13, atol=1e-14)


def test_nan_and_inf_become_the_largest_value():
    """NaN logits, an infinite box, a zero-size pair (GIoU 0/0): the library's nan_to_num."""
    logits, pb, targets = scene(dtype=torch.float32, seed=5)
    logits[0, 3] = float("nan")
    pb[2, 4] = torch.tensor([0.5, 0.5, float("inf"), 0.2])
    pb[3, 5] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    targets[3]["boxes"][1] = torch.tensor([0.5, 0.5, 0.0, 0.0])
    for kind in ("softmax", "focal"):
        cost = ours(logits, pb, targets, kind)
        big = torch.finfo(torch.float32).max
        assert (cost[0, 3, :3] == big).all() and (cost[2, 4, :7] == big).all() and cost[3, 5, 1] == big
        ref = library_blocks(logits, pb, targets, kind)
        for b, n in enumerate(SIZES):
            torch.testing.assert_close(cost[b, :, :n], ref[b], rtol=2e-6, atol=2e-6)


def test_half_inputs_are_computed_in_float32_and_rounded_once():
    logits, pb, targets = scene(dtype=torch.float32, seed=6)
    half = ours(logits.half(), pb.half(), [dict(t, boxes=t["boxes"].half()) for t in targets], "focal")
    full = ours(logits.half().float(), pb.half().float(),
                [dict(t, boxes=t["boxes"].half().float()) for t in targets], "focal")
    assert half.dtype == torch.float16
    assert torch.equal(half, full.half())


@pytest.mark.parametrize("make,kind", [
    (lambda: T.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2), "softmax"),
    (lambda: DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2), "focal")],
    ids=["detr", "deformable"])
def test_routed_matchers_return_the_librarys_matchings(make, kind):
    """Random scenes (a unique optimum): the same (query, target) pairs, in the same order;
    the functional form too."""
    import detloss_cuda.integrations.transformers as dl

    for dtype in (torch.float32, torch.float64):
        for seed in range(4):
            logits, pb, targets = scene(dtype=dtype, seed=seed, sizes=[3, 0, 7, 30])
            out = {"logits": logits, "pred_boxes": pb}
            m = make()
            ref = m(out, targets)
            with dl.patched():
                got = m(out, targets)
            fn = hungarian_match(logits, pb, targets, class_cost=m.class_cost, bbox_cost=m.bbox_cost,
                                 giou_cost=m.giou_cost, class_kind=kind)
            for (i, j), (oi, oj), (fi, fj) in zip(ref, got, fn):
                assert torch.equal(i, oi) and torch.equal(j, oj) and torch.equal(i, fi) and torch.equal(j, fj)
                assert oi.dtype == torch.int64


def test_ties_give_the_librarys_total_cost():
    """Duplicate targets and identical queries: several optimal matchings; the total cost of
    ours equals the library's (SciPy solves the same block up to the last ulp)."""
    import detloss_cuda.integrations.transformers as dl

    logits, pb, targets = scene(dtype=torch.float64, seed=7, sizes=[4, 6])
    targets[0]["boxes"][1] = targets[0]["boxes"][0]
    targets[0]["class_labels"][1] = targets[0]["class_labels"][0]
    pb[1, :10] = pb[1, 0]
    logits[1, :10] = logits[1, 0]
    m = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    out = {"logits": logits, "pred_boxes": pb}
    ref = m(out, targets)
    with dl.patched():
        got = m(out, targets)
    blocks = library_blocks(logits, pb, targets, "focal", wc=2.0, wb=5.0, wg=2.0)
    for b, ((i, j), (oi, oj)) in enumerate(zip(ref, got)):
        assert len(oi) == len(i)
        torch.testing.assert_close(blocks[b][oi, oj].sum(), blocks[b][i, j].sum(), rtol=1e-14, atol=0)


def test_rt_detr_and_lw_detr_matchers():
    """RT-DETR's (focal with its alpha and gamma, or softmax without use_focal_loss) and
    LW-DETR's (query groups solved apart, float32)."""
    import types

    import detloss_cuda.integrations.transformers as dl

    logits, pb, targets = scene(dtype=torch.float32, seed=8, Q=24, sizes=[2, 5, 0, 4])
    out = {"logits": logits, "pred_boxes": pb}
    matchers = []
    for focal in (True, False):
        cfg = types.SimpleNamespace(matcher_class_cost=2.0, matcher_bbox_cost=5.0, matcher_giou_cost=2.0,
                                    use_focal_loss=focal, matcher_alpha=0.3, matcher_gamma=1.5)
        matchers.append((RTDetrHungarianMatcher(cfg), ()))
    matchers.append((LwDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2), (3,)))
    calls = []
    real = dl.DM.detr_match_cost
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl.DM, "detr_match_cost", lambda *a, **k: calls.append(k["class_kind"]) or real(*a, **k))
        for m, extra in matchers:
            ref = m(out, targets, *extra)
            with dl.patched():
                got = m(out, targets, *extra)
            for (i, j), (oi, oj) in zip(ref, got):
                assert torch.equal(i, oi) and torch.equal(j, oj)
    assert calls == ["focal", "softmax", "focal"]


def _rf_scene(seed, sizes=(3, 0, 7, 5), Q=24, H=12, W=10, h=24, w=20):
    """RF-DETR segmentation outputs: mask logits [B, Q, H, W] and each image's boolean
    target masks [T_b, h, w] (a blob each), on the box scene."""
    g = torch.Generator().manual_seed(100 + seed)
    logits, pb, targets = scene(dtype=torch.float32, seed=seed, Q=Q, sizes=list(sizes))
    pm = torch.randn(len(sizes), Q, H, W, generator=g) * 3
    for t in targets:
        m = torch.zeros(len(t["boxes"]), h, w, dtype=torch.bool)
        for k in range(len(m)):
            y, x = (int(v) for v in torch.randint(0, 12, (2,), generator=g))
            m[k, y:y + 8, x:x + 6] = True
        t["masks"] = m
    return logits, pb, pm, targets


def test_rf_detr_segmentation_matcher():
    """RF-DETR's segmentation matcher: the box and class part fused, the mask part the
    library's lines on the same random points (one torch.rand draw, the generator left where
    the library leaves it): the library's matchings, one group and three; NaN logits (a row of
    the largest cost, replaced before the mask cost is added); float64 mask logits (the
    library's grid_sample error) and a target
    whose mask count differs from its box count run the library's code."""
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss.loss_rf_detr import RfDetrHungarianMatcher

    m = RfDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2, mask_point_sample_ratio=4,
                               cost_mask_class_cost=5, cost_mask_dice_cost=5)
    calls = []
    real = dl.DM.detr_match_cost

    def run(out, targets, groups):
        torch.manual_seed(3)
        got = m(out, targets, groups)
        return got, torch.rand(4)  # where the generator was left

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl.DM, "detr_match_cost", lambda *a, **k: calls.append(k["class_kind"]) or real(*a, **k))
        for seed, groups in ((0, 1), (1, 3), (2, 1), (3, 3)):
            logits, pb, pm, targets = _rf_scene(seed)
            if seed == 2:
                logits[2, 5] = float("nan")
            out = {"logits": logits, "pred_boxes": pb, "pred_masks": pm}
            ref, ref_next = run(out, targets, groups)
            with dl.patched():
                got, got_next = run(out, targets, groups)
            assert torch.equal(ref_next, got_next)
            for b, ((i, j), (oi, oj)) in enumerate(zip(ref, got)):
                if seed == 2 and b == 2:
                    # the NaN query's row is the largest cost: ties only if it had to match
                    assert 5 not in i.tolist() and torch.equal(i, oi) and torch.equal(j, oj)
                    continue
                assert torch.equal(i, oi) and torch.equal(j, oj), (seed, b)
        assert calls == ["focal"] * 4
        logits, pb, pm, targets = _rf_scene(5, sizes=(0, 0, 0, 0))  # no targets at all
        out = {"logits": logits, "pred_boxes": pb, "pred_masks": pm}
        with dl.patched():
            assert [(len(i), len(j)) for i, j in m(out, targets, 2)] == [(0, 0)] * 4
        assert calls == ["focal"] * 5
        logits, pb, pm, targets = _rf_scene(4)
        out = {"logits": logits, "pred_boxes": pb, "pred_masks": pm.double()}
        with pytest.raises(RuntimeError, match="expected scalar type Double but found Float"):
            m(out, targets, 1)  # the library's: float64 masks, float32 points in grid_sample
        with dl.patched():
            with pytest.raises(RuntimeError, match="expected scalar type Double but found Float"):
                m(out, targets, 1)
            bad = [dict(t) for t in targets]
            bad[0] = dict(bad[0], masks=bad[0]["masks"][:2])
            with pytest.raises(RuntimeError, match="The size of tensor a"):  # the library's sum
                m({"logits": logits, "pred_boxes": pb, "pred_masks": pm}, bad, 1)
    assert calls == ["focal"] * 5


def _grounding_scene(seed, sizes=(3, 0, 7, 12), K=16, dtype=torch.float32):
    """Text-token logits [B, Q, K] and per-image label maps (int64 0/1, as the model builds
    them: each class one to three tokens; image 2 has a class without tokens, a NaN cost)."""
    g = torch.Generator().manual_seed(seed)
    logits, pb, targets = scene(dtype=dtype, seed=seed, C=K, sizes=list(sizes))
    maps = []
    for b, t in enumerate(targets):
        n = 5 + b
        lm = torch.zeros(n, K, dtype=torch.int64)
        for c in range(n):
            start = int(torch.randint(0, K - 3, (), generator=g))
            lm[c, start:start + 1 + int(torch.randint(0, 3, (), generator=g))] = 1
        if b == 2:
            lm[4] = 0
        maps.append(lm)
        t["class_labels"] = torch.randint(0, n, (len(t["boxes"]),), generator=g)
    return logits, pb, targets, tuple(maps)


def test_grounding_dino_matcher():
    """Grounding DINO's matcher (the class cost a matmul of token costs and label maps): the
    library's matchings on random scenes (an image with a label without tokens: a column of
    NaN costs, the largest value for every query, so any query is optimal there: the same
    number of pairs); float64 logits with float32 label maps (the
    library's matmul raises) and a label outside an image's classes go to the library."""
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher

    m = GroundingDinoHungarianMatcher(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0)
    calls = []
    real = dl.DM.detr_match_cost
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl.DM, "detr_match_cost", lambda *a, **k: calls.append(k["class_kind"]) or real(*a, **k))
        for seed in range(4):
            logits, pb, targets, maps = _grounding_scene(seed)
            out = {"logits": logits, "pred_boxes": pb, "label_maps": maps}
            ref = m(out, targets)
            with dl.patched():
                got = m(out, targets)
            for b, ((i, j), (oi, oj)) in enumerate(zip(ref, got)):
                if b == 2 and (targets[2]["class_labels"] == 4).any():
                    assert len(oi) == len(i)  # ties among the NaN column's entries
                    continue
                assert torch.equal(i, oi) and torch.equal(j, oj)
        assert calls == ["given"] * 4
        logits, pb, targets, maps = _grounding_scene(5)
        with dl.patched():
            with pytest.raises(RuntimeError):  # the library's matmul of float64 by float32
                m({"logits": logits.double(), "pred_boxes": pb.double(), "label_maps": maps},
                  [dict(t, boxes=t["boxes"].double()) for t in targets])
            bad = [dict(t) for t in targets]
            bad[3] = dict(bad[3], class_labels=torch.full((12,), 8))  # image 3 has 8 classes
            with pytest.raises(IndexError):
                m({"logits": logits, "pred_boxes": pb, "label_maps": maps}, bad)
    assert calls == ["given"] * 4


def test_what_is_not_routed_keeps_the_librarys_code_and_errors():
    """A subclass, invalid corners (generalized_box_iou's ValueError), a label outside the
    classes (the library's IndexError), float16 boxes (the library's cdist error on the CPU):
    the library's code runs."""
    import detloss_cuda.integrations.transformers as dl

    logits, pb, targets = scene(dtype=torch.float32, seed=9)
    calls = []
    real = dl.DM.detr_match_cost

    class Sub(T.HungarianMatcher):
        pass

    with pytest.MonkeyPatch.context() as mp, dl.patched():
        mp.setattr(dl.DM, "detr_match_cost", lambda *a, **k: calls.append(1) or real(*a, **k))
        Sub()({"logits": logits, "pred_boxes": pb}, targets)
        bad = pb.clone()
        bad[0, 0, 2] = -0.1
        with pytest.raises(ValueError, match=r"boxes1 must be in \[x0, y0, x1, y1\]"):
            T.HungarianMatcher()({"logits": logits, "pred_boxes": bad}, targets)
        t2 = [dict(t) for t in targets]
        t2[0] = dict(t2[0], class_labels=torch.tensor([0, 1, 99]))
        with pytest.raises(IndexError):
            T.HungarianMatcher()({"logits": logits, "pred_boxes": pb}, t2)
        with pytest.raises(NotImplementedError, match="cdist"):  # (the library's own, on the CPU)
            T.HungarianMatcher()({"logits": logits.half(), "pred_boxes": pb.half()},
                                 [dict(t, boxes=t["boxes"].half()) for t in targets])
    assert calls == []


def test_batched_solver_gives_scipys_matchings():
    """solve(solver='batched'): the padded batch in one call of torch-linear-assignment (SciPy
    inside it on the CPU; Triton on a GPU: compiled, not run here): the padding columns (cost 0
    for every query) change no image's optimum, so the matchings are SciPy's on random scenes
    (images with 0 and with fewer targets than the widest); the largest-float entries of
    NaN costs are solved in float64 as SciPy does; 'auto' on the CPU is SciPy; the errors."""
    pytest.importorskip("torch_linear_assignment")
    import detloss_cuda.match as DM

    for seed in range(4):
        logits, pb, targets = scene(dtype=torch.float32, seed=seed, sizes=[3, 0, 7, 30])
        if seed == 3:
            logits[2, 4] = float("nan")  # a row of the largest float32
        sizes = [len(t["boxes"]) for t in targets]
        cost = ours(logits, pb, targets, "focal", class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)
        ref = solve(cost, sizes, "scipy")
        for (i, j), (bi, bj) in zip(ref, solve(cost, sizes, "batched")):
            assert torch.equal(i, bi) and torch.equal(j, bj) and bi.dtype == bj.dtype == torch.int64
        # LW-DETR's query groups: 30 queries in 3 groups of 10; image 3's first 5 targets (its
        # block's other columns hold costs, which the batched solver must not see)
        g_sizes = [3, 0, 7, 5]
        for (i, j), (bi, bj) in zip(solve(cost, g_sizes, "scipy", groups=3),
                                    solve(cost, g_sizes, "batched", groups=3)):
            assert torch.equal(i, bi) and torch.equal(j, bj)
    assert [len(i) for i, _ in solve(cost[:, :, :0], [0] * 4, "batched")] == [0] * 4
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DM, "_batched_solver", lambda: calls.append(1) or (lambda c: 1 / 0))
        solve(cost, sizes)  # auto, on the CPU: SciPy
        mp.setattr(DM, "default_solver", "batched")
        with pytest.raises(ZeroDivisionError):
            solve(cost, sizes)  # the module's default reaches the batched solver
        mp.setattr(DM, "_batched_solver", lambda: None)
        with pytest.raises(ImportError, match=r"solve\(solver='batched'\) needs torch-linear-assignment"):
            solve(cost, sizes)
    with pytest.raises(ValueError, match=r"solver must be one of \('auto', 'scipy', 'batched'\), got 'lapjv'"):
        solve(cost, sizes, "lapjv")
    with pytest.raises(ValueError, match=r"needs at least as many queries as an image's targets"):
        solve(cost[:, :20], sizes, "batched")


def test_errors_name_the_argument():
    logits, pb, targets = scene()
    lab = torch.cat([t["class_labels"] for t in targets])
    tb = torch.cat([t["boxes"] for t in targets])
    op = "detloss.detr_match_cost: "
    with pytest.raises(ValueError, match=op + r"sizes must add up to the 15 targets"):
        detr_match_cost(logits, pb, lab, tb, [3, 0, 7, 4])
    with pytest.raises(ValueError, match=op + r"sizes must hold B = 4 numbers"):
        detr_match_cost(logits, pb, lab, tb, [15])
    with pytest.raises(ValueError, match=op + r"pred_boxes must have shape \[B, Q, 4\] = \[4, 30, 4\]"):
        detr_match_cost(logits, pb[..., :3], lab, tb, SIZES)
    with pytest.raises(ValueError, match=op + r"class_kind must be 'softmax' \(DETR\), 'focal'"):
        detr_match_cost(logits, pb, lab, tb, SIZES, class_kind="sigmoid")
    with pytest.raises(ValueError, match=op + r"convention must be 'transformers' or 'ultralytics'"):
        detr_match_cost(logits, pb, lab, tb, SIZES, convention="mmdet")
    with pytest.raises(ValueError, match=op + r"with class_kind='given', logits must be the class "
                       r"cost \[B, Q, max\(sizes\)\] = \[4, 30, 7\], got \[4, 30, 12\]"):
        detr_match_cost(logits, pb, None, tb, SIZES, class_kind="given")
    with pytest.raises(ValueError, match=op + r"target_labels must be in \[0, C\) = \[0, 12\), got 12"):
        detr_match_cost(logits, pb, torch.full_like(lab, 12), tb, SIZES)
    with pytest.raises(TypeError, match=op + "target_labels must be an integer tensor"):
        detr_match_cost(logits, pb, lab.float(), tb, SIZES)
    with pytest.raises(ValueError, match=op + r"gamma must be a finite number >= 0"):
        detr_match_cost(logits, pb, lab, tb, SIZES, gamma=-1.0)
    with pytest.raises(TypeError, match="sizes must be a list of ints"):
        detr_match_cost(logits, pb, lab, tb, "many")


def test_empty_and_opcheck():
    logits, pb, targets = scene(sizes=[0, 0, 0, 0])
    cost = ours(logits, pb, targets, "softmax")
    assert cost.shape == (4, 30, 0)
    assert [len(i) for i, _ in solve(cost, [0] * 4)] == [0] * 4
    logits, pb, targets = scene(B=2, Q=6, C=4, sizes=[2, 3])
    args = (logits, pb, torch.cat([t["class_labels"] for t in targets]),
            torch.cat([t["boxes"] for t in targets]), [2, 3])
    for kind in ("softmax", "focal"):
        torch.library.opcheck(torch.ops.detloss.detr_match_cost.default,
                              (*args, kind, 1.0, 5.0, 2.0, 0.25, 2.0))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    for kind in ("softmax", "focal"):
        for dtype in (torch.float32, torch.float64):
            logits, pb, targets = scene(dtype=dtype, seed=3)
            cpu = ours(logits, pb, targets, kind)
            cuda = ours(logits.cuda(), pb.cuda(), [{k: v.cuda() for k, v in t.items()} for t in targets], kind)
            torch.testing.assert_close(cuda.cpu(), cpu, rtol=2e-6 if dtype == torch.float32 else 1e-14,
                                       atol=2e-6 if dtype == torch.float32 else 1e-14)


@pytest.mark.cuda
def test_cuda_auto_solver_is_the_batched_one():
    """On CUDA with torch-linear-assignment installed, 'auto' solves the batch in one call
    (Triton on sm_80 and newer) and returns SciPy's matchings on random scenes."""
    pytest.importorskip("torch_linear_assignment")
    import detloss_cuda.match as DM

    calls = []
    real = DM._batched_solver()
    for seed in range(4):
        logits, pb, targets = scene(dtype=torch.float32, seed=seed, sizes=[3, 0, 7, 30])
        sizes = [len(t["boxes"]) for t in targets]
        cost = ours(logits.cuda(), pb.cuda(), [{k: v.cuda() for k, v in t.items()} for t in targets],
                    "focal", class_cost=2.0, bbox_cost=5.0, giou_cost=2.0)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DM, "_batched_solver", lambda: calls.append(1) or real)
            got = solve(cost, sizes)
        for (i, j), (gi, gj) in zip(solve(cost, sizes, "scipy"), got):
            assert torch.equal(i, gi) and torch.equal(j, gj)
    assert len(calls) == 4
