"""The fused keypoint assigner (ultralytics' PoseTaskAlignedAssigner, YOLO26-pose) against
ultralytics' own (8.4.190): the same five outputs on random and adversarial scenes, within the
detection assigner's rules (tests/test_assign.py: ties among equal zero metrics; libm's exp vs
torch's, and here the order of the OKS sum over the keypoints, in the last ulp of an
overlap); the level gate and its fallback, the CIoU of a box without a visible keypoint,
errors, opcheck."""

import pytest
import torch

import detloss_cuda.nn as DN
from detloss_cuda.assign import task_aligned_assign
from assign_scenes import adversarial, anchor_strides, anchors, pose_parts, scene
from test_assign import compare

tal = pytest.importorskip("ultralytics.utils.tal")

KW = [dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0),
      dict(topk=7, topk2=1, alpha=0.5, beta=6.0), dict(topk=10, topk2=3, alpha=0.5, beta=6.0)]
KW_IDS = ["pose26-loss", "default", "one2one", "topk2"]


def run_both(parts, cls=DN.PoseTaskAlignedAssigner, **kw):
    inputs, strides, pd_kpts, gt_kpts, sigmas = parts
    theirs = tal.PoseTaskAlignedAssigner(sigmas, **kw)(*inputs, strides, pd_kpts=pd_kpts,
                                                        gt_kpts=gt_kpts)
    ours = cls(sigmas, **kw)(*inputs, strides, pd_kpts=pd_kpts, gt_kpts=gt_kpts)
    return theirs, ours


def check(theirs, ours):
    """compare() with the scores to a few ulp: an OKS is a sum of K exponentials, and torch
    sums them in an order of its own (vectorised), so an overlap may differ in its last ulp,
    the metric (overlap^6) in its last few; the assignments are equal."""
    return compare(theirs, ours, exact_scores=False)


@pytest.mark.parametrize("kw", KW, ids=KW_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_random_scenes_match_ultralytics(dtype, kw):
    for seed in range(3):
        parts = pose_parts(scene(dtype=dtype, seed=seed, big=seed % 2 == 0), seed=seed)
        theirs, ours = run_both(parts, num_classes=5, **kw)
        check(theirs, ours)
        assert ours[3].any()


@pytest.mark.parametrize("kind", ["fallback", "exact", "invisible"])
@pytest.mark.parametrize("scene_kind", [None, "overlapping", "duplicates", "tiny", "outside",
                                        "no_boxes_in_one_image", "bad_predictions"])
def test_adversarial_scenes_match_ultralytics(scene_kind, kind):
    for dtype in (torch.float64, torch.float32):
        base = scene(dtype=dtype, seed=4, big=True) if scene_kind is None else adversarial(scene_kind, dtype)
        parts = pose_parts(base, seed=4, kind=kind)
        for kw in (KW[0], KW[2]):
            theirs, ours = run_both(parts, num_classes=5, **kw)
            check(theirs, ours)


def test_the_gate_and_its_fallback_decide():
    """The scenes above exercise the level gate: without it (level_range open) the outputs
    differ from ultralytics'; the wide, thin box of 'fallback' has no candidate on a level
    that fits it, keeps its ungated candidates on both sides and gets anchors."""
    parts = pose_parts(scene(dtype=torch.float64, seed=0, big=True), seed=0, kind="fallback")
    kw = dict(num_classes=5, **KW[0])

    class NoGate(DN.PoseTaskAlignedAssigner):
        level_range = (0.0, float("inf"))

    theirs, ours = run_both(parts, **kw)
    check(theirs, ours)
    _, ungated = run_both(parts, cls=NoGate, **kw)
    assert (ungated[3] != theirs[3]).any() or (ungated[4] != theirs[4]).any()
    # ultralytics' own gate leaves box 0 of image 0 without a gated candidate: its fallback
    inputs, strides = parts[:2]
    ref = tal.PoseTaskAlignedAssigner(parts[4], **kw)
    ref.anc_strides = strides
    s, p, a, lab, gt, m = inputs
    inside = tal.TaskAlignedAssigner.select_candidates_in_gts(ref, a, gt, m)[0, 0]
    side = float((gt[0, 0, 2:] - gt[0, 0, :2]).prod().sqrt())
    fits = ((side >= 2 * strides) | (strides == 8)) & ((side <= 12 * strides) | (strides == 32))
    assert inside.any() and not (inside & fits).any()
    assert torch.equal(ref.select_candidates_in_gts(a, gt, m)[0, 0], inside)
    assert (ours[3][0] & (ours[4][0] == 0)).any()


def test_keypoints_decide_over_boxes():
    """A box with visible keypoints ranks anchors by OKS, not CIoU: two anchors with the same
    box, one with the true keypoints; a box without visible ones falls back to the CIoU."""
    parts = pose_parts(scene(B=1, M=3, dtype=torch.float64, seed=2, pad=0), seed=2)
    inputs, strides, pk, gk, sig = parts
    s, p, a, lab, gt, m = inputs
    gk = gk.clone()
    gk[0, 1, :, 2] = 2  # box 1: every keypoint visible
    s = torch.full_like(s, 0.5)
    p = p.clone()
    c = (gt[0, 1, :2] + gt[0, 1, 2:]) / 2
    inside = ((a - c).abs() < 4).all(-1).nonzero().flatten()[:2]
    p[0, inside] = gt[0, 1]  # both anchors predict box 1 exactly
    pk = pk.clone()
    pk[0, inside[0]] = gk[0, 1, :, :2].float()
    pk[0, inside[1]] = gk[0, 1, :, :2].float() + 5
    theirs, ours = run_both(((s, p, a, lab, gt, m), strides, pk, gk, sig), num_classes=5, topk=1)
    check(theirs, ours)
    assert ours[3][0, inside[0]] and ours[4][0, inside[0]] == 1 and not ours[3][0, inside[1]]


def test_no_boxes_at_all_is_ultralytics_early_return():
    parts = pose_parts(scene(B=2, M=0, pad=0), seed=0)
    theirs, ours = run_both(parts, num_classes=5)
    for t, o in zip(theirs, ours):
        assert t.dtype == o.dtype and t.shape == o.shape and torch.equal(t, o)


def test_scores_as_logits_index_form_and_strided_keypoints():
    """The head's logits and the index form; pd_kpts as the YOLO26 head's [B, K·3, A] output
    viewed [B, A, K, 2] (read in place) gives what a contiguous copy gives."""
    parts = pose_parts(scene(B=2, M=6, seed=5, dtype=torch.float64), seed=5)
    inputs, strides, pk, gk, sig = parts
    dense = DN.PoseTaskAlignedAssigner(sig, num_classes=5, **KW[0])(*inputs, strides, pd_kpts=pk,
                                                                     gt_kpts=gk)
    B, A, K = pk.shape[:3]
    head = torch.cat([pk, torch.zeros(B, A, K, 1)], -1).reshape(B, A, K * 3).transpose(1, 2).contiguous()
    view = head.transpose(1, 2).view(B, A, K, 3)[..., :2]
    assert not view.is_contiguous()
    r = task_aligned_assign(torch.logit(inputs[0]), *inputs[1:], num_classes=5, **KW[0],
                            scores_are_logits=True, index=True, anc_strides=strides, pd_kpts=view,
                            gt_kpts=gk, sigmas=sig)
    assert torch.equal(r.fg_mask, dense[3]) and torch.equal(r.target_bboxes, dense[1])
    onehot = torch.nn.functional.one_hot(r.labels.clamp(max=4), 5) * (r.labels < 5).unsqueeze(-1)
    torch.testing.assert_close(onehot * r.scores.unsqueeze(-1), dense[2], rtol=1e-12, atol=1e-15)


def test_crowds_stay_linear_in_memory():
    """Crowd pose: 64 people an image at 640 px, 8,400 anchors: the fused assigner's lists are
    64 x topk; equal to ultralytics' there too."""
    inputs = scene(B=2, M=64, size=640, seed=3, pad=4)
    parts = pose_parts(inputs, size=640, seed=3)
    assert parts[0][2].shape[0] == 8400 and parts[1].shape == (8400,)
    theirs, ours = run_both(parts, num_classes=5, **KW[0])
    check(theirs, ours)


def test_errors_name_the_argument():
    parts = pose_parts(scene(B=2, M=3, pad=0), seed=0)
    inputs, st, pk, gk, sig = parts
    T = DN.PoseTaskAlignedAssigner(sig, topk=10, num_classes=5)
    op = "detloss.tal_assign_pose: "
    with pytest.raises(ValueError, match=op + r"pd_kpts must have shape \[B, A, K, 2\] = \[2, 525, K, 2\]"):
        T(*inputs, st, pd_kpts=torch.cat([pk, pk[..., :1]], -1), gt_kpts=gk)
    with pytest.raises(ValueError, match=op + r"gt_kpts must have shape \[B, >= M, K, 3\] = \[2, >= 3, 17, 3\]"):
        T(*inputs, st, pd_kpts=pk, gt_kpts=gk[..., :2])
    with pytest.raises(ValueError, match=op + r"anc_strides must have shape \[A\] = \[525\]"):
        T(*inputs, st[:-1], pd_kpts=pk, gt_kpts=gk)
    with pytest.raises(ValueError, match=op + r"sigmas must have shape \[K\] = \[17\]"):
        DN.PoseTaskAlignedAssigner(sig[:5], topk=10, num_classes=5)(*inputs, st, pd_kpts=pk, gt_kpts=gk)
    with pytest.raises(TypeError, match=op + "pd_kpts must be a floating tensor"):
        T(*inputs, st, pd_kpts=pk.long(), gt_kpts=gk)
    with pytest.raises(TypeError, match="the keypoint overlap needs anc_strides, pd_kpts, gt_kpts and "
                                        "sigmas together; sigmas is missing"):
        task_aligned_assign(*inputs, anc_strides=st, pd_kpts=pk, gt_kpts=gk)
    with pytest.raises(ValueError, match="the keypoint overlap takes xyxy boxes and no masks"):
        task_aligned_assign(*inputs, anc_strides=st, pd_kpts=pk, gt_kpts=gk, sigmas=sig, rotated=True)
    with pytest.raises(TypeError, match="level_range must be two numbers"):
        task_aligned_assign(*inputs, anc_strides=st, pd_kpts=pk, gt_kpts=gk, sigmas=sig, level_range=2)


def test_opcheck():
    parts = pose_parts(scene(B=2, M=4, pad=1), seed=1)
    inputs, st, pk, gk, sig = parts
    for k, k2 in ((10, 10), (7, 1)):
        torch.library.opcheck(torch.ops.detloss.tal_assign_pose.default,
                              (*inputs, st, pk, gk, sig, k, k2, 0.5, 6.0, 16.0, 1e-9, False, 2.0, 12.0))


def test_strides_of_one_level_and_anchors():
    """A single-level pyramid: its level is both the finest and the coarsest, every box fits."""
    a = anchors(160, strides=(16,))
    st = anchor_strides(160, strides=(16,))
    s, p, _, lab, gt, m = scene(B=2, M=5, seed=6, dtype=torch.float64)
    g = torch.Generator().manual_seed(6)
    A = a.shape[0]
    p = torch.cat([a - 12, a + 12], -1).double().unsqueeze(0).expand(2, A, 4).contiguous()
    s = torch.rand(2, A, 5, generator=g, dtype=torch.float64)
    parts = pose_parts((s, p, a, lab, gt, m), seed=6)
    parts = (parts[0], st, parts[2], parts[3], parts[4])
    theirs, ours = run_both(parts, num_classes=5, **KW[0])
    check(theirs, ours)


@pytest.mark.cuda
@pytest.mark.parametrize("kw", [KW[0], KW[2]], ids=[KW_IDS[0], KW_IDS[2]])
def test_cuda_matches_cpu_and_ultralytics(kw):
    for dtype in (torch.float32, torch.float64):
        for seed in range(3):
            parts = pose_parts(scene(B=4, M=12, dtype=dtype, seed=seed), seed=seed)
            inputs, st, pk, gk, sig = parts
            cpu = DN.PoseTaskAlignedAssigner(sig, num_classes=5, **kw)(*inputs, st, pd_kpts=pk, gt_kpts=gk)
            dev = [t.cuda() for t in inputs]
            ours = DN.PoseTaskAlignedAssigner(sig.cuda(), num_classes=5, **kw)(
                *dev, st.cuda(), pd_kpts=pk.cuda(), gt_kpts=gk.cuda())
            theirs, _ = run_both(parts, num_classes=5, **kw)
            check(theirs, [t.cpu() for t in ours])
            for x, y in zip(cpu, ours):
                torch.testing.assert_close(x, y.cpu(), rtol=1e-6, atol=1e-7)
