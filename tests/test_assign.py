"""The fused task-aligned assigner against ultralytics' own (8.4.190), on random and adversarial
scenes: the same five outputs, except where torch.topk's order among equal zero metrics
decides (there ultralytics' choice is arbitrary; ours is the lower anchor index), and the
tests prove those are the only differences and that they carry a target score of 0."""
import os

import pytest
import torch

import detloss_cuda.nn as DN
from detloss_cuda.assign import task_aligned_assign
from assign_scenes import adversarial, anchors, scene
from conftest import devices

tal = pytest.importorskip("ultralytics.utils.tal")

REQUIRE = os.environ.get("DETLOSS_REQUIRE_INTEGRATIONS") == "1"


def run_both(inputs, device="cpu", **kw):
    theirs = tal.TaskAlignedAssigner(**kw)(*inputs)
    moved = [t.to(device) for t in inputs]
    ours = DN.TaskAlignedAssigner(**kw)(*moved)
    return theirs, [t.cpu() for t in ours]


def compare(theirs, ours, exact_scores=True, check_scores=True):
    """Every output equal, except at anchors where ultralytics' top-k picked among equal zero
    metrics; there the target score is 0 on both sides (no effect on any loss weighted by it).
    check_scores=False: the caller checks the target scores itself."""
    t_lab, t_box, t_sc, t_fg, t_idx = theirs
    o_lab, o_box, o_sc, o_fg, o_idx = ours
    assert o_lab.dtype == t_lab.dtype and o_box.dtype == t_box.dtype and o_sc.dtype == t_sc.dtype
    assert o_fg.dtype == t_fg.dtype and o_idx.dtype == t_idx.dtype
    assert o_sc.shape == t_sc.shape
    differ = (o_fg != t_fg) | (o_idx != t_idx) | (o_lab != t_lab) | (o_box != t_box).any(-1)
    # the only admissible differences: zero-score foreground picked from ties
    assert (t_sc.sum(-1)[differ] == 0).all() and (o_sc.sum(-1)[differ] == 0).all(), \
        f"{int(differ.sum())} anchors differ with a non-zero target score"
    same = ~differ
    assert torch.equal(o_fg[same], t_fg[same]) and torch.equal(o_idx[same], t_idx[same])
    if not check_scores:
        pass
    elif exact_scores:
        torch.testing.assert_close(o_sc, t_sc, rtol=0, atol=0)
    else:  # atan and pow of libm vs torch's (Sleef): a few ulp
        torch.testing.assert_close(o_sc, t_sc, rtol=2e-6 if o_sc.dtype == torch.float32 else 1e-13,
                                   atol=1e-7 if o_sc.dtype == torch.float32 else 1e-15)
    return int(differ.sum())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_random_scenes_match_ultralytics(seed, dtype):
    inputs = scene(dtype=dtype, seed=seed, big=seed % 2 == 0)
    theirs, ours = run_both(inputs, topk=10, num_classes=5, alpha=0.5, beta=6.0)
    compare(theirs, ours, exact_scores=False)


@pytest.mark.parametrize("kw", [dict(topk=13, alpha=1.0, beta=6.0), dict(topk=10, alpha=0.5, beta=6.0),
                                dict(topk=7, topk2=1, alpha=0.5, beta=6.0),
                                dict(topk=10, topk2=3, alpha=0.5, beta=6.0)],
                         ids=["v8-default", "v8-loss", "e2e-one2one", "topk2"])
def test_parameters_and_topk2(kw):
    inputs = scene(B=2, M=9, dtype=torch.float64, seed=3, big=True)
    theirs, ours = run_both(inputs, num_classes=5, **kw)
    compare(theirs, ours, exact_scores=False)


@pytest.mark.parametrize("kind", ["overlapping", "nested", "duplicates", "tiny", "cover_all",
                                  "outside", "no_boxes_in_one_image", "bad_predictions"])
def test_adversarial_scenes(kind):
    inputs = adversarial(kind)
    for kw in (dict(topk=10, alpha=0.5), dict(topk=7, topk2=1, alpha=0.5)):
        theirs, ours = run_both(inputs, num_classes=5, beta=6.0, **kw)
        compare(theirs, ours, exact_scores=False)


def test_no_boxes_at_all_is_ultralytics_early_return():
    s, p, a, lab, gt, m = scene(B=2, M=0, pad=0)
    theirs, ours = run_both((s, p, a, lab, gt, m), num_classes=5)
    for t, o in zip(theirs, ours):
        assert t.dtype == o.dtype and t.shape == o.shape and torch.equal(t, o)


def test_tie_rule_lowest_anchor_index():
    """Every metric 0 (predictions far away): a box's top-k slots go to the zero-metric anchors
    of lowest index over ALL anchors (the rule), and of those only its candidates are
    positives. Box 1 covers the top-left corner, which holds anchors 0..4 of the first row
    (x = 4, 12, ..., 36 at stride 8): they, and only they, become its foreground; box 0 (in the
    middle) has no anchor among the 10 lowest: no foreground, where torch.topk picks arbitrarily."""
    a = anchors(160, dtype=torch.float64)
    A = a.shape[0]
    gt = torch.tensor([[[60.0, 60.0, 100.0, 100.0], [0.0, 0.0, 40.0, 40.0]]], dtype=torch.float64)
    pd = torch.tensor([1000.0, 1000.0, 1001.0, 1001.0], dtype=torch.float64).expand(1, A, 4)
    s = torch.full((1, A, 3), 0.5, dtype=torch.float64)
    lab = torch.tensor([[[1.0], [2.0]]], dtype=torch.float64)
    m = torch.ones(1, 2, 1, dtype=torch.float64)
    labels, box, sc, fg, idx = DN.TaskAlignedAssigner(topk=10, num_classes=3)(s, pd, a, lab, gt, m)
    assert (sc == 0).all()
    assert fg[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert (idx[0, :5] == 1).all() and (labels[0, :5] == 2).all()
    # ultralytics agrees wherever its own choice is not arbitrary
    compare(tal.TaskAlignedAssigner(topk=10, num_classes=3)(s, pd, a, lab, gt, m),
            (labels, box, sc, fg, idx), exact_scores=False)


def test_scores_as_logits_and_index_form():
    s, p, a, lab, gt, m = scene(B=2, M=6, seed=5, big=True)
    logits = torch.logit(s)
    dense = DN.TaskAlignedAssigner(topk=10, num_classes=5, alpha=0.5)(s, p, a, lab, gt, m)
    from_logits = DN.TaskAlignedAssigner(topk=10, num_classes=5, alpha=0.5)(
        logits, p, a, lab, gt, m, scores_are_logits=True)
    for x, y in zip(dense, from_logits):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    r = task_aligned_assign(s, p, a, lab, gt, m, topk=10, num_classes=5, alpha=0.5, index=True)
    labels, scores = r
    assert labels.dtype == torch.long and ((labels == 5) == ~dense[3]).all()
    onehot = torch.nn.functional.one_hot(labels.clamp(max=4), 5) * (labels < 5).unsqueeze(-1)
    torch.testing.assert_close(onehot * scores.unsqueeze(-1), dense[2])


def test_many_boxes_and_anchors_stay_linear_in_memory():
    """8192 boxes over 2^15 anchors in one image: a (B, M, A) float tensor would be 1 GiB."""
    g = torch.Generator().manual_seed(0)
    A, M = 1 << 15, 8192
    anc = torch.rand(A, 2, generator=g) * 1024
    xy = torch.rand(1, M, 2, generator=g) * 1000
    gt = torch.cat([xy, xy + torch.rand(1, M, 2, generator=g) * 24 + 1], -1)
    pd = torch.cat([anc - 6, anc + 6], -1).unsqueeze(0)
    s = torch.rand(1, A, 3, generator=g)
    out = DN.TaskAlignedAssigner(topk=10, num_classes=3)(s, pd, anc, torch.zeros(1, M, 1), gt,
                                                          torch.ones(1, M, 1))
    assert out[3].any() and out[2].shape == (1, A, 3)


def test_errors_name_the_argument():
    s, p, a, lab, gt, m = scene(B=2, M=3, pad=0)
    T = DN.TaskAlignedAssigner(topk=10, num_classes=5)
    with pytest.raises(ValueError, match=r"pd_bboxes must have shape \[B, A, 4\]"):
        T(s, p[..., :3], a, lab, gt, m)
    with pytest.raises(ValueError, match=r"anc_points must have shape \[A, 2\]"):
        T(s, p, a[:-1], lab, gt, m)
    with pytest.raises(ValueError, match=r"gt_labels must have shape \[B, M, 1\]"):
        T(s, p, a, lab[:, :2], gt, m)
    with pytest.raises(ValueError, match=r"mask_gt must have shape \[B, M, 1\]"):
        T(s, p, a, lab, gt, m[:1])
    with pytest.raises(TypeError, match="pd_scores must be a floating tensor"):
        T(s.long(), p, a, lab, gt, m)
    with pytest.raises(ValueError, match=r"topk must be in \[1, 64\]"):
        DN.TaskAlignedAssigner(topk=65, num_classes=5)(s, p, a, lab, gt, m)
    with pytest.raises(ValueError, match="needs at least as many anchors"):
        DN.TaskAlignedAssigner(topk=10, num_classes=5)(s[:, :5], p[:, :5], a[:5], lab, gt, m)
    with pytest.raises(ValueError, match=r"gt_labels of a valid box must be in \[0, C\)"):
        T(s, p, a, lab + 10, gt, m)
    with pytest.raises(TypeError, match="gt_bboxes must be a torch.Tensor"):
        task_aligned_assign(s, p, a, lab, gt.tolist(), m)


def test_opcheck():
    s, p, a, lab, gt, m = scene(B=2, M=4, pad=1)
    torch.library.opcheck(torch.ops.detloss.tal_assign.default,
                          (s, p, a, lab, gt, m, 10, 10, 0.5, 6.0, 16.0, 1e-9, False))
    torch.library.opcheck(torch.ops.detloss.tal_assign.default,
                          (s, p, a, lab, gt, m, 7, 1, 0.5, 6.0, 16.0, 1e-9, False))


@pytest.mark.cuda
@pytest.mark.parametrize("kw", [dict(topk=10, alpha=0.5), dict(topk=7, topk2=1, alpha=0.5)])
def test_cuda_matches_cpu_and_ultralytics(kw):
    for dtype in (torch.float32, torch.float64):
        for seed in range(3):
            inputs = scene(B=4, M=12, dtype=dtype, seed=seed, big=seed == 0)
            theirs, ours = run_both(inputs, device="cuda", num_classes=5, **kw)
            compare(theirs, ours, exact_scores=False)
            cpu = DN.TaskAlignedAssigner(num_classes=5, **kw)(*inputs)
            for x, y in zip(cpu, ours):
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_the_reference_assigner(dtype):
    """reference.task_aligned_assign (ultralytics' algorithm written out densely, the tie rule
    a stable sort: independent of ultralytics and of the kernels) on random and adversarial
    scenes: everything equal but the target scores, which are within 4 ulps (the reference's
    atan and pow are torch's, the kernel's libm's)."""
    import detloss_cuda.reference as R

    scenes = [scene(dtype=dtype, seed=s, big=s % 2 == 0) for s in range(4)]
    scenes += [tuple(t.to(dtype) if t.is_floating_point() else t for t in adversarial(k))
               for k in ("overlapping", "nested", "duplicates", "tiny", "cover_all", "outside",
                         "no_boxes_in_one_image", "bad_predictions")]
    for inputs in scenes:
        for kw in (dict(topk=10, alpha=0.5), dict(topk=13, alpha=1.0), dict(topk=7, topk2=2, alpha=0.5)):
            ours = DN.TaskAlignedAssigner(num_classes=5, beta=6.0, **kw)(*inputs)
            ref = R.task_aligned_assign(*inputs, num_classes=5, beta=6.0, **kw)
            for i, (a, b) in enumerate(zip(ours, ref)):
                assert a.dtype == b.dtype and a.shape == b.shape, i
                if i == 2:
                    torch.testing.assert_close(a, b, rtol=0, atol=4 * torch.finfo(dtype).eps)
                else:
                    assert torch.equal(a, b), (i, kw)
