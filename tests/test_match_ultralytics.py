"""ultralytics' RT-DETR matcher (models/utils/ops.py HungarianMatcher) and DETRLoss's class
loss on the fused kernels: the cost blocks (detr_match_cost(convention='ultralytics')) against
ultralytics' lines, the routed matcher's matchings against the library's (the total cost
where the optimum is not unique), what stays ultralytics', and _get_loss_class on class
indices against its one-hot VFL / focal / BCE, values and gradients."""
import pytest
import torch

from detloss_cuda.match import detr_match_cost

pytest.importorskip("ultralytics")
import detloss_cuda.integrations.ultralytics as dl  # noqa: E402
from ultralytics.models.utils.loss import DETRLoss  # noqa: E402
from ultralytics.models.utils.ops import HungarianMatcher  # noqa: E402
from ultralytics.utils.metrics import bbox_iou  # noqa: E402

SIZES = [3, 0, 9, 30]


def scene(B=4, Q=40, C=12, sizes=SIZES, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    box = lambda n: torch.cat([torch.rand(n, 2, generator=g, dtype=torch.float64),  # noqa: E731
                               torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.3 + 0.02], -1)
    scores = (torch.randn(B, Q, C, generator=g, dtype=torch.float64) * 2).to(dtype)
    pb = box(B * Q).view(B, Q, 4).to(dtype)
    gt = box(sum(sizes)).to(dtype)
    cls = torch.randint(0, C, (sum(sizes),), generator=g)
    return pb, scores, gt, cls, list(sizes)


def library_blocks(pb, scores, gt, cls, sizes, use_fl=True, alpha=0.25, gamma=2.0, gain=None):
    """HungarianMatcher.forward's cost, its lines (ultralytics 8.4)."""
    gain = gain or {"class": 1, "bbox": 5, "giou": 2}
    bs, nq, _ = scores.shape
    gt_b = torch.nn.utils.rnn.pad_sequence(gt.split(sizes), batch_first=True)
    gt_c = torch.nn.utils.rnn.pad_sequence(cls.split(sizes), batch_first=True)
    p = scores.detach().float()
    p = p.sigmoid() if use_fl else p.softmax(-1)
    p = p.gather(2, gt_c[:, None].expand(-1, nq, -1))
    b = pb.detach().float()
    if use_fl:
        cc = alpha * ((1 - p) ** gamma) * (-(p + 1e-8).log()) - (1 - alpha) * (p ** gamma) * (-(1 - p + 1e-8).log())
    else:
        cc = -p
    cb = (b.unsqueeze(2) - gt_b.unsqueeze(1)).abs().sum(-1)
    cg = 1.0 - bbox_iou(b.unsqueeze(2), gt_b.unsqueeze(1), xywh=True, GIoU=True).squeeze(-1)
    c = gain["class"] * cc + gain["bbox"] * cb + gain["giou"] * cg
    c[c.isnan() | c.isinf()] = 0.0
    return [c[i, :, :n] for i, n in enumerate(sizes)]


def ours(pb, scores, gt, cls, sizes, use_fl=True, alpha=0.25, gamma=2.0, gain=None):
    gain = gain or {"class": 1, "bbox": 5, "giou": 2}
    return detr_match_cost(scores.float(), pb.float(), cls, gt, sizes, class_cost=gain["class"],
                           bbox_cost=gain["bbox"], giou_cost=gain["giou"], alpha=alpha,
                           gamma=gamma, class_kind="focal" if use_fl else "softmax",
                           convention="ultralytics")


@pytest.mark.parametrize("use_fl", [True, False])
def test_cost_blocks_are_ultralytics(use_fl):
    """float32 (ultralytics computes the cost in float32 whatever the predictions' dtype):
    each block equal to its lines up to a few ulp of the terms (torch's vectorised sigmoid,
    exp and log vs libm's: ~0.3% of the entries differ, by one or two ulp); the padding 0."""
    for seed, gain, alpha, gamma in ((0, None, 0.25, 2.0), (1, {"class": 2, "bbox": 5, "giou": 2}, 0.3, 1.5),
                                     (2, {"class": 1, "bbox": 1, "giou": 1}, 0.5, 1.0)):
        pb, scores, gt, cls, sizes = scene(seed=seed)
        cost = ours(pb, scores, gt, cls, sizes, use_fl, alpha, gamma, gain)
        assert cost.shape == (4, 40, 30) and cost.dtype == torch.float32
        ref = library_blocks(pb, scores, gt, cls, sizes, use_fl, alpha, gamma, gain)
        for b, n in enumerate(sizes):
            torch.testing.assert_close(cost[b, :, :n], ref[b], rtol=2e-6, atol=2e-6)
            assert (cost[b, :, n:] == 0).all()


def test_nan_and_inf_become_zero():
    """ultralytics sets NaN and ±inf entries to 0 (transformers: to the largest value)."""
    pb, scores, gt, cls, sizes = scene(seed=3)
    scores[0, 2] = float("nan")
    pb[2, 4] = torch.tensor([0.5, 0.5, float("inf"), 0.2])
    cost = ours(pb, scores, gt, cls, sizes)
    assert (cost[0, 2, :3] == 0).all() and (cost[2, 4, :9] == 0).all()
    ref = library_blocks(pb, scores, gt, cls, sizes)
    for b, n in enumerate(sizes):
        torch.testing.assert_close(cost[b, :, :n], ref[b], rtol=2e-6, atol=2e-6)


def _both(m, *args):
    ref = m(*args)
    with dl.patched():
        got = m(*args)
    return ref, got


@pytest.mark.parametrize("use_fl", [True, False])
def test_routed_matcher_returns_ultralytics_matchings(use_fl):
    """Random scenes: the same pairs in the same order, the targets' indices offset into the
    concatenated targets as ultralytics offsets them; half predictions too (both .float())."""
    calls = []
    real = dl.DM.detr_match_cost
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl.DM, "detr_match_cost", lambda *a, **k: calls.append(1) or real(*a, **k))
        for seed in range(4):
            for dtype in (torch.float32, torch.float16):
                pb, scores, gt, cls, sizes = scene(seed=seed, dtype=torch.float32)
                m = HungarianMatcher(cost_gain={"class": 2, "bbox": 5, "giou": 2}, use_fl=use_fl,
                                     alpha=0.25, gamma=2.0)
                ref, got = _both(m, pb.to(dtype), scores.to(dtype), gt, cls, sizes)
                assert len(ref) == len(got) == 4
                for (i, j), (oi, oj) in zip(ref, got):
                    assert torch.equal(i, oi) and torch.equal(j, oj) and oj.dtype == torch.int64
    assert len(calls) == 8


def test_ties_give_ultralytics_total_cost():
    """Duplicate targets and identical queries (several optimal matchings): the same total."""
    pb, scores, gt, cls, sizes = scene(seed=7, sizes=[4, 6], B=2)
    gt[1], cls[1] = gt[0], cls[0]
    pb[1, :10], scores[1, :10] = pb[1, 0], scores[1, 0]
    m = HungarianMatcher()
    ref, got = _both(m, pb, scores, gt, cls, sizes)
    blocks = library_blocks(pb, scores, gt, cls, sizes)
    first = [0, 4]
    for b, ((i, j), (oi, oj)) in enumerate(zip(ref, got)):
        assert len(oi) == len(i)
        torch.testing.assert_close(blocks[b][oi, oj - first[b]].sum(), blocks[b][i, j - first[b]].sum(),
                                   rtol=1e-6, atol=0)


def test_what_is_not_routed_keeps_ultralytics_code_and_errors():
    """A subclass, float64 targets (ultralytics mixes their dtype into the cost), no targets at
    all, a label outside the classes (its gather's error): ultralytics' code runs."""
    pb, scores, gt, cls, sizes = scene(seed=9)
    calls = []
    real = dl.DM.detr_match_cost

    class Sub(HungarianMatcher):
        pass

    with pytest.MonkeyPatch.context() as mp, dl.patched():
        mp.setattr(dl.DM, "detr_match_cost", lambda *a, **k: calls.append(1) or real(*a, **k))
        Sub()(pb, scores, gt, cls, sizes)
        HungarianMatcher()(pb, scores, gt.double(), cls, sizes)
        empty = HungarianMatcher()(pb, scores, gt[:0], cls[:0], [0] * 4)
        assert [len(i) for i, _ in empty] == [0] * 4
        bad = cls.clone()
        bad[1] = 99
        with pytest.raises(RuntimeError, match="index 99 is out of bounds"):
            HungarianMatcher()(pb, scores, gt, bad, sizes)
    assert calls == []


def _loss_class_case(seed, nc=6, bs=2, nq=9, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(bs, nq, nc, generator=g) * 2).to(dtype)
    targets = torch.full((bs, nq), nc, dtype=torch.int64)
    gt_scores = torch.zeros(bs, nq)
    for b, q, c in ((0, 1, 2), (0, 5, 0), (1, 3, 5), (1, 4, 2)):
        targets[b, q] = c
        gt_scores[b, q] = torch.rand((), generator=g)
    gt_scores[1, 4] = 0.0  # a matched query whose box does not overlap: IoU 0, still positive
    return x, targets, gt_scores


@pytest.mark.parametrize("form", ["vfl", "focal", "bce", "vfl_no_gts"])
def test_loss_class_on_indices_is_ultralytics(form):
    """_get_loss_class: ultralytics' one-hot VFL (the default), FocalLoss (use_vfl=False or no
    targets), BCE (use_fl=False): the value and the logits' gradient, the postfix and gains."""
    kw = {"vfl": dict(use_vfl=True), "focal": dict(use_vfl=False), "bce": dict(use_fl=False),
          "vfl_no_gts": dict(use_vfl=True)}[form]
    crit = DETRLoss(nc=6, loss_gain={"class": 1.5, "bbox": 5, "giou": 2, "no_object": 0.1,
                                     "mask": 1, "dice": 1}, **kw)
    num_gts = 0 if form == "vfl_no_gts" else 4
    for seed in range(3):
        x, targets, gt_scores = _loss_class_case(seed)
        xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = crit._get_loss_class(xr, targets, gt_scores, num_gts, postfix="_aux")
        with dl.patched():
            calls = []
            with pytest.MonkeyPatch.context() as mp:
                for name in ("varifocal_loss", "sigmoid_focal_loss", "binary_cross_entropy_with_logits"):
                    real = getattr(dl.DF, name)
                    mp.setattr(dl.DF, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
                got = crit._get_loss_class(xp, targets, gt_scores, num_gts, postfix="_aux")
        assert list(got) == list(want) == ["loss_class_aux"] and len(calls) == 1, calls
        w, o = want["loss_class_aux"], got["loss_class_aux"]
        assert o.shape == w.shape == () and o.dtype == w.dtype
        torch.testing.assert_close(o, w, rtol=2e-6, atol=1e-7)
        (gw,), (go,) = torch.autograd.grad(w, xr), torch.autograd.grad(o, xp)
        torch.testing.assert_close(go, gw, rtol=2e-5, atol=1e-7)


def test_loss_class_hands_back_what_it_does_not_take():
    """A label beyond the background class (ultralytics' scatter error), another VFL class,
    half logits for the focal form (ultralytics computes it in half): ultralytics' code."""
    crit = DETRLoss(nc=6)
    x, targets, gt_scores = _loss_class_case(0)
    bad = targets.clone()
    bad[0, 0] = 9
    with dl.patched():
        with pytest.raises(RuntimeError, match="index 9 is out of bounds"):
            crit._get_loss_class(x, bad, gt_scores, 4)
        from ultralytics.utils.loss import VarifocalLoss

        calls = []

        class MyVFL(VarifocalLoss):
            def forward(self, *a):
                calls.append("vfl")
                return super().forward(*a)

        crit.vfl = MyVFL()
        crit._get_loss_class(x, targets, gt_scores, 4)
        crit.vfl, crit.fl = VarifocalLoss(), type(crit.fl)()
        crit.vfl = None  # the focal form (use_vfl=False) with half logits
        with pytest.MonkeyPatch.context() as mp:
            real = dl.DF.sigmoid_focal_loss
            mp.setattr(dl.DF, "sigmoid_focal_loss",
                       lambda x, t, **k: calls.append(tuple(t.shape)) or real(x, t, **k))
            got = crit._get_loss_class(x.half(), targets, gt_scores, 4)
    # ultralytics' _get_loss_class: its one-hot reaches FocalLoss (whose own patch takes it)
    assert calls == ["vfl", (2, 9, 6)] and got["loss_class"].dtype == torch.float16
