"""The fused mask-aware assigner (ultralytics' SegTaskAlignedAssigner, YOLO26-seg) against
ultralytics' own (8.4.190): the same five outputs on random and adversarial scenes, within the
detection assigner's rules (tests/test_assign.py: ties among equal zero metrics; atan and pow
of libm vs torch's in the target scores), the tie rule of its 3·topk lists, its errors, opcheck.
The prototypes and coefficients are dyadic (assign_scenes.seg_parts), so every mask pixel is
decided by exact sums on both sides; csrc/math/assign.h says what decides it otherwise."""
import pytest
import torch

import detloss_cuda.nn as DN
from detloss_cuda.assign import task_aligned_assign
from assign_scenes import adversarial, anchors, scene, seg_parts
from test_assign import compare

tal = pytest.importorskip("ultralytics.utils.tal")

KW = [dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0),
      dict(topk=7, topk2=1, alpha=0.5, beta=6.0), dict(topk=10, topk2=3, alpha=0.5, beta=6.0)]
KW_IDS = ["yolo26-one2many", "v8-default", "yolo26-one2one", "topk2"]


def run_both(inputs, seg, **kw):
    names = ("pd_coef", "mask_scale", "proto", "gt_masks")
    theirs = tal.SegTaskAlignedAssigner(**kw)(*inputs, **dict(zip(names, seg)))
    ours = DN.SegTaskAlignedAssigner(**kw)(*inputs, *seg)
    return theirs, ours


@pytest.mark.parametrize("kw", KW, ids=KW_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_random_scenes_match_ultralytics(dtype, kw):
    for seed in range(3):
        inputs = scene(dtype=dtype, seed=seed, big=seed % 2 == 0)
        theirs, ours = run_both(inputs, seg_parts(inputs, seed=seed), num_classes=5, **kw)
        compare(theirs, ours, exact_scores=False)


@pytest.mark.parametrize("kind", ["overlapping", "nested", "duplicates", "tiny", "cover_all",
                                  "outside", "no_boxes_in_one_image", "bad_predictions"])
@pytest.mark.parametrize("masks", [None, "zero_coef", "full_coef", "empty_gt", "fractional"])
def test_adversarial_scenes_match_ultralytics(kind, masks):
    inputs = adversarial(kind)
    for kw in (KW[0], KW[2]):
        theirs, ours = run_both(inputs, seg_parts(inputs, kind=masks), num_classes=5, **kw)
        compare(theirs, ours, exact_scores=False)


def test_the_mask_overlap_decides():
    """Not the detection assigner's answer: the masks change positives and scores (so the tests
    above would fail if the mask IoU were dropped), and a mask IoU of 1 for every listed pair
    gives (CIoU + 1) / 2 where the detection assigner has CIoU."""
    inputs = scene(dtype=torch.float64, seed=1, big=True)
    seg = seg_parts(inputs, seed=1)
    det = DN.TaskAlignedAssigner(num_classes=5, **KW[0])(*inputs)
    ours = DN.SegTaskAlignedAssigner(num_classes=5, **KW[0])(*inputs, *seg)
    assert not torch.equal(det[3], ours[3]) and not torch.equal(det[2], ours[2])


def test_tie_rule_lowest_anchor_index_in_the_mask_lists():
    """Every candidate of the box has the same box metric (one predicted box and score for all
    anchors) and more than 3·topk candidates: its list takes the 3·topk of lowest index. Every
    predicted mask covers its crop, so each listed pair gets the same mask IoU > 0 and the
    others 0: the positives are the topk lowest-index candidates, all with the same score.
    ultralytics' torch.topk picks its 30 among the equal metrics in an unspecified order; the
    sum of its target scores (every positive scores the same) is the same."""
    a = anchors(160, dtype=torch.float64)
    A = a.shape[0]
    gt = torch.tensor([[[20.0, 20.0, 140.0, 140.0]]], dtype=torch.float64)
    pd = torch.tensor([30.0, 30.0, 130.0, 130.0], dtype=torch.float64).expand(1, A, 4).contiguous()
    s = torch.full((1, A, 3), 0.5, dtype=torch.float64)
    lab = torch.tensor([[[1.0]]], dtype=torch.float64)
    m = torch.ones(1, 1, 1, dtype=torch.float64)
    inputs = (s, pd, a, lab, gt, m)
    seg = seg_parts(inputs, kind="full_coef")
    kw = dict(topk=10, num_classes=3, alpha=0.5, beta=6.0)
    labels, box, sc, fg, idx = DN.SegTaskAlignedAssigner(**kw)(*inputs, *seg)
    cand = ((a[:, 0] > 20) & (a[:, 0] < 140) & (a[:, 1] > 20) & (a[:, 1] < 140)).nonzero().flatten()
    assert len(cand) > 30
    assert fg[0].nonzero().flatten().tolist() == cand[:10].tolist()
    pos = sc[0, fg[0], 1]
    assert (pos == pos[0]).all() and pos[0] > 0
    theirs = tal.SegTaskAlignedAssigner(**kw)(*inputs, pd_coef=seg[0], mask_scale=seg[1],
                                               proto=seg[2], gt_masks=seg[3])
    assert int(theirs[3].sum()) == 10
    torch.testing.assert_close(theirs[2].sum(), sc.sum(), rtol=1e-12, atol=0)


def test_scores_as_logits_and_index_form():
    inputs = scene(B=2, M=6, seed=5, big=True, dtype=torch.float64)
    seg = seg_parts(inputs, seed=5)
    s = inputs[0]
    dense = DN.SegTaskAlignedAssigner(num_classes=5, **KW[0])(*inputs, *seg)
    r = task_aligned_assign(torch.logit(s), *inputs[1:], num_classes=5, **KW[0],
                            scores_are_logits=True, index=True, pd_coef=seg[0],
                            mask_scale=seg[1], proto=seg[2], gt_masks=seg[3])
    assert torch.equal(r.fg_mask, dense[3]) and torch.equal(r.target_gt_idx, dense[4])
    onehot = torch.nn.functional.one_hot(r.labels.clamp(max=4), 5) * (r.labels < 5).unsqueeze(-1)
    torch.testing.assert_close(onehot * r.scores.unsqueeze(-1), dense[2], rtol=1e-12, atol=1e-15)


def test_no_boxes_at_all_is_ultralytics_early_return():
    inputs = scene(B=2, M=0, pad=0)
    seg = seg_parts(inputs)
    theirs, ours = run_both(inputs, seg, num_classes=5)
    for t, o in zip(theirs, ours):
        assert t.dtype == o.dtype and t.shape == o.shape and torch.equal(t, o)


def test_many_boxes_stay_linear_in_memory():
    """2,000 boxes over 8,400 anchors (640 px) and 160 x 160 prototypes: ultralytics' dense
    (B, M, A) metric alone is 67 MB; the fused lists are 2,000 x 30."""
    g = torch.Generator().manual_seed(0)
    a = anchors(640)
    A, M = a.shape[0], 2000
    xy = torch.rand(1, M, 2, generator=g) * 600
    gt = torch.cat([xy, xy + torch.rand(1, M, 2, generator=g) * 30 + 4], -1)
    pd = torch.cat([a - 12, a + 12], -1).unsqueeze(0)
    s = torch.rand(1, A, 3, generator=g)
    inputs = (s, pd, a, torch.zeros(1, M, 1), gt, torch.ones(1, M, 1))
    seg = seg_parts(inputs, nm=32, H=160, size=640)
    out = DN.SegTaskAlignedAssigner(topk=10, num_classes=3)(*inputs, *seg)
    assert out[3].any() and out[2].shape == (1, A, 3)


def test_errors_name_the_argument():
    inputs = scene(B=2, M=3, pad=0)
    coef, scale, proto, gm = seg_parts(inputs)
    T = DN.SegTaskAlignedAssigner(topk=10, num_classes=5)
    op = "detloss.tal_assign_seg: "
    with pytest.raises(ValueError, match=op + r"pd_coef must have shape \[B, A, nm\]"):
        T(*inputs, coef[:, :-1], scale, proto, gm)
    with pytest.raises(ValueError, match=op + r"proto must have shape \[B, nm, H, W\] with B = 2 and nm = 8"):
        T(*inputs, coef, scale, proto[:, :4], gm)
    with pytest.raises(ValueError, match=op + r"mask_scale must have shape \[B, 1\]"):
        T(*inputs, coef, scale[:1], proto, gm)
    with pytest.raises(TypeError, match=op + "gt_masks must be a bool tensor"):
        T(*inputs, coef, scale, proto, gm.float())
    with pytest.raises(ValueError, match=op + r"gt_masks must have shape \[B, >= M, H, W\]"):
        T(*inputs, coef, scale, proto, gm[:, :2])
    with pytest.raises(ValueError, match=op + r"gt_masks must have shape \[B, >= M, H, W\]"):
        T(*inputs, coef, scale, proto, gm[..., :-1])
    with pytest.raises(TypeError, match=op + "pd_coef must be a floating tensor"):
        T(*inputs, coef.long(), scale, proto, gm)
    with pytest.raises(ValueError, match=op + r"topk must be at most 21"):
        DN.SegTaskAlignedAssigner(topk=22, num_classes=5)(*inputs, coef, scale, proto, gm)
    with pytest.raises(ValueError, match=op + r"pd_bboxes must have shape \[B, A, 4\]"):
        T(inputs[0], inputs[1][..., :3], *inputs[2:], coef, scale, proto, gm)
    with pytest.raises(TypeError, match="mask_scale, proto and gt_masks together; proto is missing"):
        task_aligned_assign(*inputs, pd_coef=coef, mask_scale=scale, gt_masks=gm)


def test_opcheck():
    inputs = scene(B=2, M=4, pad=1)
    seg = seg_parts(inputs)
    for k, k2 in ((10, 10), (7, 1)):
        torch.library.opcheck(torch.ops.detloss.tal_assign_seg.default,
                              (*inputs, *seg, k, k2, 0.5, 6.0, 16.0, 1e-9, False))


@pytest.mark.cuda
@pytest.mark.parametrize("kw", [KW[0], KW[2]], ids=[KW_IDS[0], KW_IDS[2]])
def test_cuda_matches_cpu_and_ultralytics(kw):
    for dtype in (torch.float32, torch.float64):
        for seed in range(3):
            inputs = scene(B=4, M=12, dtype=dtype, seed=seed, big=seed == 0)
            seg = seg_parts(inputs, seed=seed)
            cpu = DN.SegTaskAlignedAssigner(num_classes=5, **kw)(*inputs, *seg)
            ours = DN.SegTaskAlignedAssigner(num_classes=5, **kw)(
                *[t.cuda() for t in inputs], *[t.cuda() for t in seg])
            theirs, _ = run_both(inputs, seg, num_classes=5, **kw)
            compare(theirs, [t.cpu() for t in ours], exact_scores=False)
            for x, y in zip(cpu, ours):
                torch.testing.assert_close(x, y.cpu(), rtol=1e-6, atol=1e-7)
