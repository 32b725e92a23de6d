"""The fused rotated assigner (ultralytics' RotatedTaskAlignedAssigner, YOLO-OBB) against
ultralytics' own (8.4.190): the same five outputs on random and adversarial scenes of xywhr
boxes, within the detection assigner's rules (tests/test_assign.py: ties among equal zero
metrics; libm's cos, sin, log, exp vs torch's in the overlaps); the tie rule, errors, opcheck."""

import pytest
import torch

import detloss_cuda.nn as DN
from detloss_cuda.assign import task_aligned_assign
from assign_scenes import anchors, rotated_scene
from test_assign import compare

tal = pytest.importorskip("ultralytics.utils.tal")

KW = [dict(topk=10, alpha=0.5, beta=6.0), dict(topk=13, alpha=1.0, beta=6.0),
      dict(topk=7, topk2=1, alpha=0.5, beta=6.0), dict(topk=10, topk2=3, alpha=0.5, beta=6.0)]
KW_IDS = ["obb-loss", "default", "one2one", "topk2"]


def run_both(inputs, **kw):
    theirs = tal.RotatedTaskAlignedAssigner(**kw)(*inputs)
    ours = DN.RotatedTaskAlignedAssigner(**kw)(*inputs)
    return theirs, ours


def check(inputs, theirs, ours, **kw):
    """compare(); in float32 the target scores as close to ultralytics' float64 result as its
    own float32 ones are, within the spread of a maximum over ~8,000 ill-conditioned values
    (at most 4 times as far, + 1e-7; measured over 108 scenes of every kind: 2.5 times at
    most, about 1 typically): ProbIoU loses digits where two boxes nearly coincide
    (t3 = log(1 + d) / 2 and 1 - exp(-bd) cancel), so an ulp of cos, sin, log or exp (libm's
    vs torch's Sleef) moves an overlap by ~1e-7 / sqrt(bd) and the metric beta times that,
    relatively: up to 1.2e-5 here, ultralytics' own float32 error up to 1.3e-5."""
    if inputs[1].dtype == torch.float64:
        return compare(theirs, ours, exact_scores=False)
    compare(theirs, ours, check_scores=False)
    i64 = tuple(t.double() if t.is_floating_point() else t for t in inputs)
    t64 = tal.RotatedTaskAlignedAssigner(**kw)(*i64)[2]
    err_theirs = (theirs[2].double() - t64).abs().max()
    err_ours = (ours[2].double() - t64).abs()
    assert (err_ours <= 4 * err_theirs + 1e-7).all(), (float(err_ours.max()), float(err_theirs))


@pytest.mark.parametrize("kw", KW, ids=KW_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_random_scenes_match_ultralytics(dtype, kw):
    for seed in range(3):
        inputs = rotated_scene(dtype=dtype, seed=seed)
        theirs, ours = run_both(inputs, num_classes=5, **kw)
        assert ours[1].shape == theirs[1].shape == (*inputs[0].shape[:2], 5)
        check(inputs, theirs, ours, num_classes=5, **kw)
        assert ours[3].any()


@pytest.mark.parametrize("kind", ["angles", "near_square", "tiny", "large", "axis"])
def test_adversarial_scenes_match_ultralytics(kind):
    for dtype in (torch.float64, torch.float32):
        inputs = rotated_scene(dtype=dtype, seed=4, kind=kind)
        for kw in (KW[0], KW[2]):
            theirs, ours = run_both(inputs, num_classes=5, **kw)
            check(inputs, theirs, ours, num_classes=5, **kw)


def test_candidates_are_ultralytics():
    """The rotated candidate test alone (every anchor of every box, via a topk that takes
    them all): the anchors inside each box's parallelogram, sides included (the scene "axis"
    puts anchors exactly on them), tiny sides enlarged to the stride."""
    for kind in ("angles", "axis", "tiny"):
        s, p, a, lab, gt, m = rotated_scene(B=2, M=5, dtype=torch.float64, seed=2, kind=kind, pad=1)
        ref = tal.RotatedTaskAlignedAssigner(topk=10, num_classes=5)
        want = ref.select_candidates_in_gts(a, gt, m) & m.bool()
        # the fused assigner with every metric equal and topk >= candidates: its foreground of a
        # lone box is exactly that box's candidates; one box at a time
        for b in range(2):
            for j in range(4):
                n = int(want[b, j].sum())
                if n == 0 or n > 64:
                    continue
                one = (s[b:b + 1].clone().fill_(0.5), gt[b:b + 1, j:j + 1].expand(1, a.shape[0], 5).contiguous(),
                       a, lab[b:b + 1, j:j + 1], gt[b:b + 1, j:j + 1], m[b:b + 1, j:j + 1])
                fg = DN.RotatedTaskAlignedAssigner(topk=n, num_classes=5)(*one)[3]
                assert torch.equal(fg[0], want[b, j]), (kind, b, j)


def test_no_boxes_at_all_is_ultralytics_early_return():
    inputs = rotated_scene(B=2, M=0, pad=0)
    theirs, ours = run_both(inputs, num_classes=5)
    for t, o in zip(theirs, ours):
        assert t.dtype == o.dtype and t.shape == o.shape and torch.equal(t, o)


def test_scores_as_logits_and_index_form():
    inputs = rotated_scene(B=2, M=6, seed=5, dtype=torch.float64)
    dense = DN.RotatedTaskAlignedAssigner(num_classes=5, **KW[0])(*inputs)
    r = task_aligned_assign(torch.logit(inputs[0]), *inputs[1:], num_classes=5, **KW[0],
                            scores_are_logits=True, index=True, rotated=True)
    assert torch.equal(r.fg_mask, dense[3]) and torch.equal(r.target_bboxes, dense[1])
    onehot = torch.nn.functional.one_hot(r.labels.clamp(max=4), 5) * (r.labels < 5).unsqueeze(-1)
    torch.testing.assert_close(onehot * r.scores.unsqueeze(-1), dense[2], rtol=1e-12, atol=1e-15)


def test_many_boxes_stay_linear_in_memory():
    """DOTA-like: 2,000 rotated boxes over 21,504 anchors (1024 px): ultralytics' (B, M, A)
    float tensors are 172 MB each; the fused assigner's lists are 2,000 x topk."""
    g = torch.Generator().manual_seed(0)
    a = anchors(1024)
    A, M = a.shape[0], 2000
    gt = torch.cat([torch.rand(1, M, 2, generator=g) * 1000 + 12, torch.rand(1, M, 2, generator=g) * 40 + 4,
                    (torch.rand(1, M, 1, generator=g) - 0.5) * 3], -1)
    pd = torch.cat([a, torch.full((A, 2), 24.0), torch.zeros(A, 1)], -1).unsqueeze(0)
    s = torch.rand(1, A, 3, generator=g)
    out = DN.RotatedTaskAlignedAssigner(topk=10, num_classes=3)(s, pd, a, torch.zeros(1, M, 1), gt,
                                                                 torch.ones(1, M, 1))
    assert out[3].any() and out[1].shape == (1, A, 5)


def test_errors_name_the_argument():
    s, p, a, lab, gt, m = rotated_scene(B=2, M=3, pad=0)
    T = DN.RotatedTaskAlignedAssigner(topk=10, num_classes=5)
    op = "detloss.tal_assign_rotated: "
    with pytest.raises(ValueError, match=op + r"pd_bboxes must have shape \[B, A, 5\] = \[2, 525, 5\] \(xywhr"):
        T(s, p[..., :4], a, lab, gt, m)
    with pytest.raises(ValueError, match=op + r"gt_bboxes must have shape \[B, M, 5\] with B = 2 \(xywhr\)"):
        T(s, p, a, lab, gt[..., :4], m)
    with pytest.raises(ValueError, match=op + r"gt_labels of a valid box must be in \[0, C\)"):
        T(s, p, a, lab + 10, gt, m)
    with pytest.raises(ValueError, match="the mask-aware overlap takes xyxy boxes"):
        task_aligned_assign(s, p, a, lab, gt, m, rotated=True, pd_coef=s, mask_scale=s, proto=s,
                            gt_masks=s)


def test_opcheck():
    inputs = rotated_scene(B=2, M=4, pad=1)
    for k, k2 in ((10, 10), (7, 1)):
        torch.library.opcheck(torch.ops.detloss.tal_assign_rotated.default,
                              (*inputs, k, k2, 0.5, 6.0, 16.0, 1e-9, False))


@pytest.mark.cuda
@pytest.mark.parametrize("kw", [KW[0], KW[2]], ids=[KW_IDS[0], KW_IDS[2]])
def test_cuda_matches_cpu_and_ultralytics(kw):
    for dtype in (torch.float32, torch.float64):
        for seed in range(3):
            inputs = rotated_scene(B=4, M=12, dtype=dtype, seed=seed)
            cpu = DN.RotatedTaskAlignedAssigner(num_classes=5, **kw)(*inputs)
            ours = DN.RotatedTaskAlignedAssigner(num_classes=5, **kw)(*[t.cuda() for t in inputs])
            theirs, _ = run_both(inputs, num_classes=5, **kw)
            check(inputs, theirs, [t.cpu() for t in ours], num_classes=5, **kw)
            for x, y in zip(cpu, ours):
                torch.testing.assert_close(x, y.cpu(), rtol=1e-6, atol=1e-7)
