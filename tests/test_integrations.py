"""The one-line integrations, end to end on code no one here wrote: an ultralytics YOLOv8n
training step and torchvision RetinaNet / FCOS training steps, patched vs unpatched.

Tolerance, and why: the patched and the unpatched step both run in float32 and round
differently (fused kernels vs torch's op-by-op code), and the backward through ~60 layers
amplifies that rounding (~3e-5 relative in the worst parameter here, patched or not). So
each is compared with the same step run in float64 (unpatched), and the patched step must
be as close to it as ultralytics' / torchvision's own float32 step is (within 2x + a few
float32 ulps). A wrong formula, a missing term or a gradient through the wrong path is off
by orders of magnitude more.

ultralytics and torchvision are test requirements (requirements.txt), not dependencies of
the package. Where either is missing the tests skip with a reason, except in CI, which sets
DETLOSS_REQUIRE_INTEGRATIONS=1 so that a missing library fails instead.
"""
import collections
import contextlib
import copy

import pytest
import torch

from integration_common import F32_EPS, Spy, _check_close_as_own_fp32, _grads, _require


# ------------------------------------------------------------------------ ultralytics
@pytest.fixture(scope="module")
def yolo():
    _require("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)  # offline: no weights
    model.args = get_cfg()  # the default hyperparameters (box, cls, dfl gains)
    model.train()
    x = torch.rand(2, 3, 128, 128)
    batch = {  # a few ground-truth boxes per image: image index, class, normalised xywh
        "batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]),
        "cls": torch.tensor([[1.0], [5.0], [7.0], [2.0], [7.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2],
                                [0.6, 0.4, 0.5, 0.3], [0.2, 0.2, 0.1, 0.15],
                                [0.75, 0.7, 0.3, 0.35]]),
    }
    return model, x, batch


def _yolo_step(model, x, batch, patched):
    import detloss_cuda.integrations.ultralytics as dl

    model.zero_grad(set_to_none=True)
    criterion = model.init_criterion()  # v8DetectionLoss, E2ELoss, v8SegmentationLoss
    ctx = dl.patched() if patched else contextlib.nullcontext()
    with ctx:
        loss, items = criterion(model(x), batch)
        loss.sum().backward()
    return {k: v.detach().double() for k, v in items.items()}, _grads(model)


def _yolo_model(cfg):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel

    torch.manual_seed(0)
    if "-pose" in cfg:
        model = PoseModel(cfg, nc=1, data_kpt_shape=(17, 3), verbose=False)  # COCO keypoints
        model.args = get_cfg()
        model.train()
        return model
    cls = SegmentationModel if "-seg" in cfg else OBBModel if "-obb" in cfg else DetectionModel
    model = cls(cfg, nc=80, verbose=False)  # offline: no weights
    model.args = get_cfg()
    model.train()
    return model


def _seg_masks(batch, n_img, size):
    """overlap_mask=True masks: per image, pixel value = 1 + the index of its object (of the
    image's objects, in batch order), rasterised from the boxes at the prototypes' size."""
    masks = torch.zeros(n_img, size, size)
    seen = collections.Counter()
    for i, (b, box) in enumerate(zip(batch["batch_idx"].long().tolist(), batch["bboxes"])):
        seen[b] += 1
        cx, cy, w, h = (box * size).tolist()
        masks[b, int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = seen[b]
    return masks


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml", "yolo11n-seg.yaml"])
def test_yolo_steps_match_with_fused_assigner(cfg, yolo, monkeypatch):
    """YOLOv8n / YOLO11n (v8DetectionLoss), YOLO26n (E2ELoss: both branches, topk2 = 1 in the
    one-to-one one), YOLO11n-seg (v8SegmentationLoss): the fused assignment and the index-
    target BCE replace ultralytics' assigner and dense targets; loss items and every
    parameter's gradient as close to float64 as ultralytics' own float32 step."""
    import detloss_cuda.integrations.ultralytics as dl

    _, x, batch = yolo
    batch = dict(batch)
    if "-seg" in cfg:
        batch["masks"] = _seg_masks(batch, x.shape[0], x.shape[-1] // 4)
    model = _yolo_model(cfg)
    m64 = copy.deepcopy(model).double()
    l64, g64 = _yolo_step(m64, x.double(), batch, patched=False)
    l32, g32 = _yolo_step(model, x, batch, patched=False)
    calls = collections.Counter()
    real = dl.task_aligned_assign

    def counted(*a, **k):
        calls["assign"] += 1
        calls["index"] += bool(k.get("index"))
        calls["logits"] += bool(k.get("scores_are_logits"))
        return real(*a, **k)

    monkeypatch.setattr(dl, "task_aligned_assign", counted)
    spy = Spy(dl.DF)
    monkeypatch.setattr(dl, "DF", spy)
    lp, gp = _yolo_step(model, x, batch, patched=True)
    branches = 2 if "26" in cfg else 1
    assert calls == {"assign": branches, "index": branches, "logits": branches}, calls
    assert spy.calls["binary_cross_entropy_with_logits"] == branches, spy.calls
    assert all(v >= 0 for v in lp.values()) and any(v > 0 for v in lp.values())
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


def _seg_batch(overlap, size):
    """Three images, the middle one without objects; masks in either of ultralytics' forms
    (overlap_mask=True: [B, H, W] instance indices; False: [N, H, W] 0/1 masks, batch order),
    rasterised from the boxes at the prototypes' size (objects in image order, as ultralytics'
    collate gives them and its preprocess() assumes)."""
    batch = {
        "batch_idx": torch.tensor([0.0, 0.0, 2.0, 2.0, 2.0]),
        "cls": torch.tensor([[1.0], [5.0], [7.0], [2.0], [7.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2],
                                [0.6, 0.4, 0.5, 0.3], [0.2, 0.2, 0.1, 0.15],
                                [0.75, 0.7, 0.3, 0.35]]),
    }
    index = _seg_masks(batch, 3, size)
    # YOLO26-seg's semantic branch: each pixel's class (0 where no object is: `present` decides)
    sem = torch.zeros(3, size, size, dtype=torch.long)
    seen = collections.Counter()
    for b, c in zip(batch["batch_idx"].long().tolist(), batch["cls"].view(-1).long().tolist()):
        seen[b] += 1
        sem[b][index[b] == seen[b]] = c
    batch["sem_masks"] = sem
    if overlap:
        batch["masks"] = index
    else:
        rows, seen = [], collections.Counter()
        for b in batch["batch_idx"].long().tolist():
            seen[b] += 1
            rows.append((index[b] == seen[b]).float())
        batch["masks"] = torch.stack(rows)
    return batch


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("cfg", ["yolo11n-seg.yaml", "yolo26n-seg.yaml"])
def test_yolo_seg_steps_match(cfg, overlap, monkeypatch):
    """YOLO11n-seg (v8SegmentationLoss) and YOLO26n-seg (E2ELoss of two SegmentLoss26): the
    mask loss on prototype_mask_loss (once a branch), both overlap_mask forms, an image with no
    objects; loss items and every parameter's gradient as close to float64 as ultralytics'
    own float32 step, and ultralytics' per-image mask loss never ran. YOLO26-seg's mask-aware
    assignment (SegTaskAlignedAssigner) on the fused assigner: its pair_overlaps never ran."""
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L

    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    batch = _seg_batch(overlap, x.shape[-1] // 4)
    model = _yolo_model(cfg)
    model.args.overlap_mask = overlap
    m64 = copy.deepcopy(model).double()
    # float64 targets too: SegTaskAlignedAssigner mixes the float32 ones preprocess() builds
    # with float64 scores (index_put refuses); ultralytics' float32 step is unaffected
    with monkeypatch.context() as mp:
        prep = L.v8DetectionLoss.preprocess
        mp.setattr(L.v8DetectionLoss, "preprocess", lambda *a, **k: prep(*a, **k).double())
        l64, g64 = _yolo_step(m64, x.double(), batch, patched=False)
    l32, g32 = _yolo_step(model, x, batch, patched=False)
    spy = Spy(dl.DF)
    monkeypatch.setattr(dl, "DF", spy)
    theirs = collections.Counter()
    real = L.v8SegmentationLoss.single_mask_loss
    monkeypatch.setattr(L.v8SegmentationLoss, "single_mask_loss",
                        staticmethod(lambda *a: theirs.update(["x"]) or real(*a)))
    bcedice = collections.Counter()
    real_bd = L.BCEDiceLoss.forward
    monkeypatch.setattr(L.BCEDiceLoss, "forward",
                        lambda *a: bcedice.update(["x"]) or real_bd(*a))
    from ultralytics.utils import tal as T

    assigned = collections.Counter()
    real_assign = dl.task_aligned_assign
    monkeypatch.setattr(dl, "task_aligned_assign", lambda *a, **k: assigned.update(
        ["seg" if k.get("pd_coef") is not None else "det"]) or real_assign(*a, **k))
    real_po = T.SegTaskAlignedAssigner.pair_overlaps
    monkeypatch.setattr(T.SegTaskAlignedAssigner, "pair_overlaps",
                        lambda *a, **k: theirs.update(["pair_overlaps"]) or real_po(*a, **k))
    lp, gp = _yolo_step(model, x, batch, patched=True)
    branches = 2 if "26" in cfg else 1
    assert assigned == {"seg" if "26" in cfg else "det": branches}, assigned
    assert spy.calls["prototype_mask_loss"] == branches, spy.calls
    assert not theirs, f"ultralytics' code ran: {theirs}"
    if "26" in cfg:  # the semantic branch on class indices: the BCE kernel, no BCEDiceLoss
        assert spy.calls["binary_cross_entropy_with_logits"] == 2 * branches, spy.calls
        assert not bcedice, "ultralytics' BCEDiceLoss ran"
        assert lp["sem_loss"] > 0
    assert lp["seg_loss"] > 0
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


@pytest.mark.parametrize("size", [8, 16])
def test_semantic_loss_on_indices_equals_bcedice_on_the_one_hot(size):
    """YOLO26-seg's semantic branch: BCEDiceLoss of the one-hot zeroed where no instance is
    (at the masks' size, resized to the logits' by nearest), in float64, against the index
    form: values and gradients."""
    _require("ultralytics")
    from ultralytics.utils.loss import BCEDiceLoss

    from detloss_cuda.integrations.ultralytics import _semantic_loss

    g = torch.Generator().manual_seed(size)
    pred = (torch.randn(2, 5, 8, 8, generator=g, dtype=torch.float64) * 2).requires_grad_()
    sem = torch.randint(0, 5, (2, size, size), generator=g)
    present = torch.rand(2, size, size, generator=g) < 0.6
    onehot = torch.zeros(2, 5, size, size, dtype=torch.float64)
    onehot.scatter_(1, sem[:, None], present[:, None].double())
    want = BCEDiceLoss(weight_bce=0.5, weight_dice=0.5)(pred, onehot)
    (gw,) = torch.autograd.grad(want, pred)
    got = _semantic_loss(pred, sem, present, 0.5, 0.5)
    (gg,) = torch.autograd.grad(got, pred)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gg, gw, rtol=1e-10, atol=1e-14)


def test_yolo26_seg_step_without_objects_matches(monkeypatch):
    """No object in the batch: ultralytics skips the mask and semantic losses (their terms are
    `(t * 0).sum()`); so does the patched step. The loss items and every parameter's gradient
    as close to float64 as ultralytics' own float32 step (a fixed float32-vs-float32 tolerance
    was the sum order of ~13,000 BCE terms: 1.3e-5 relative with one thread)."""
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L

    _require("ultralytics")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4),
             "masks": torch.zeros(2, 16, 16), "sem_masks": torch.zeros(2, 16, 16, dtype=torch.long)}
    model = _yolo_model("yolo26n-seg.yaml")
    with monkeypatch.context() as mp:  # float64 targets for the float64 run (as the seg steps)
        prep = L.v8DetectionLoss.preprocess
        mp.setattr(L.v8DetectionLoss, "preprocess", lambda *a, **k: prep(*a, **k).double())
        l64, g64 = _yolo_step(copy.deepcopy(model).double(), x.double(), batch, patched=False)
    l32, g32 = _yolo_step(model, x, batch, patched=False)
    lp, gp = _yolo_step(model, x, batch, patched=True)
    assert l32.keys() == lp.keys() and lp["sem_loss"] == 0 and lp["seg_loss"] == 0
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)
    assert dl.is_patched() is False


def test_ultralytics_assigner_class_is_routed_and_subclasses_are_not():
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import tal as T

    calls = collections.Counter()
    real = dl.task_aligned_assign
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "task_aligned_assign", lambda *a, **k: calls.update(["x"]) or real(*a, **k))
        g = torch.Generator().manual_seed(0)
        A = 336
        anc = torch.rand(A, 2, generator=g) * 128
        pd = torch.cat([anc - 10, anc + 10], -1).unsqueeze(0).repeat(2, 1, 1)
        s = torch.rand(2, A, 4, generator=g)
        gt = torch.tensor([[[10.0, 10.0, 60.0, 70.0], [0.0, 0.0, 0.0, 0.0]]]).repeat(2, 1, 1)
        lab = torch.tensor([[[1.0], [0.0]]]).repeat(2, 1, 1)
        m = torch.tensor([[[1.0], [0.0]]]).repeat(2, 1, 1)
        ref = T.TaskAlignedAssigner(topk=10, num_classes=4)(s, pd, anc, lab, gt, m)
        class Sub(T.TaskAlignedAssigner):  # a subclass (pose, rotated, seg): its own overlaps
            pass

        with dl.patched():
            out = T.TaskAlignedAssigner(topk=10, num_classes=4)(s, pd, anc, lab, gt, m)
            assert calls["x"] == 1
            sub = Sub(topk=10, num_classes=4)(s, pd, anc, lab, gt, m)
            assert calls["x"] == 1  # not routed: ultralytics' code ran
        for a, b, c in zip(ref, out, sub):
            torch.testing.assert_close(a, c)  # (its CIoU is the patched bbox_iou: ulps)
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b)


def test_ultralytics_seg_assigner_is_routed_where_the_kernels_take_it():
    """SegTaskAlignedAssigner's forward (inherited from TaskAlignedAssigner): with its four
    arguments and bool masks on the fused assigner, equal to ultralytics' own; float masks, a
    topk above 21 (lists of 3·topk > 64) or a subclass: ultralytics' code."""
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import tal as T
    from assign_scenes import scene, seg_parts

    from test_assign import compare

    inputs = scene(B=2, M=5, seed=3, big=True, dtype=torch.float64)
    coef, scale, proto, gm = seg_parts(inputs, seed=3)
    kw = dict(pd_coef=coef, mask_scale=scale, proto=proto, gt_masks=gm)
    calls = collections.Counter()
    real = dl.task_aligned_assign

    class Sub(T.SegTaskAlignedAssigner):
        pass

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "task_aligned_assign", lambda *a, **k: calls.update(["x"]) or real(*a, **k))
        ref = T.SegTaskAlignedAssigner(topk=10, num_classes=5)(*inputs, **kw)
        ref22 = T.SegTaskAlignedAssigner(topk=22, num_classes=5)(*inputs, **kw)
        with dl.patched():
            out = T.SegTaskAlignedAssigner(topk=10, num_classes=5)(*inputs, **kw)
            assert calls["x"] == 1
            out22 = T.SegTaskAlignedAssigner(topk=22, num_classes=5)(*inputs, **kw)
            T.SegTaskAlignedAssigner(topk=10, num_classes=5)(*inputs, **{**kw, "gt_masks": gm.float()})
            Sub(topk=10, num_classes=5)(*inputs, **kw)
            assert calls["x"] == 1  # not routed: ultralytics' code ran
    compare(ref, out, exact_scores=False)
    for a, b in zip(ref22, out22):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cfg", ["yolo11n-obb.yaml", "yolo26n-obb.yaml"])
def test_yolo_obb_steps_match(cfg, monkeypatch):
    """YOLO11n-obb (v8OBBLoss) and YOLO26n-obb (E2ELoss of two v8OBBLoss branches), an image
    without objects, rotated boxes at 0, ±π/4, π/2, near-square, tiny (sides below the
    stride) and below ultralytics' 2-pixel filter: the assignment from the logits on the fused rotated assigner (ultralytics'
    candidate test and ProbIoU of the assigner never ran), the BCE on its class indices (no
    dense BCE ran), RotatedBboxLoss's ProbIoU and the DFL decode fused; loss items and every
    parameter's gradient as close to float64 as ultralytics' own float32 step."""
    import math

    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L
    from ultralytics.utils import tal as T

    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    # (two boxes below ultralytics' 2-pixel filter, one of them alone in image 1; image order,
    # as ultralytics' preprocess requires)
    batch = {"batch_idx": torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0]),
             "cls": torch.tensor([[1.0], [5.0], [4.0], [7.0], [6.0], [2.0], [7.0], [3.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4, 0.0], [0.3, 0.6, 0.2, 0.2001, math.pi / 4],
                                     [0.4, 0.4, 0.01, 0.3, 0.2], [0.7, 0.3, 0.3, 0.1, -math.pi / 4],
                                     [0.5, 0.5, 0.012, 0.012, 0.0], [0.6, 0.4, 0.5, 0.3, math.pi / 2],
                                     [0.2, 0.2, 0.1, 0.15, 0.3], [0.8, 0.75, 0.06, 0.05, 1.0]])}
    model = _yolo_model(cfg)
    m64 = copy.deepcopy(model).double()
    with monkeypatch.context() as mp:  # float64 targets for the float64 step
        prep = L.v8OBBLoss.preprocess
        mp.setattr(L.v8OBBLoss, "preprocess", lambda *a, **k: prep(*a, **k).double())
        l64, g64 = _yolo_step(m64, x.double(), batch, patched=False)
    l32, g32 = _yolo_step(model, x, batch, patched=False)
    assigned = collections.Counter()
    real = dl.task_aligned_assign
    monkeypatch.setattr(dl, "task_aligned_assign", lambda *a, **k: assigned.update(
        [k.get("rotated")]) or real(*a, **k))
    theirs = collections.Counter()
    for name in ("select_candidates_in_gts", "iou_calculation"):
        orig = getattr(T.RotatedTaskAlignedAssigner, name)
        monkeypatch.setattr(T.RotatedTaskAlignedAssigner, name,
                            lambda *a, _o=orig, _n=name, **k: theirs.update([_n]) or _o(*a, **k))
    ours = collections.Counter()
    for name in ("probiou", "binary_cross_entropy_with_logits", "distribution_integral"):
        f = getattr(dl.DF, name)
        monkeypatch.setattr(dl.DF, name, lambda *a, _f=f, _n=name, **k: ours.update([_n]) or _f(*a, **k))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    monkeypatch.setattr(torch.nn.functional, "binary_cross_entropy_with_logits",
                        lambda *a, **k: theirs.update(["dense BCE"]) or bce(*a, **k))
    lp, gp = _yolo_step(model, x, batch, patched=True)
    branches = 2 if "26" in cfg else 1
    assert assigned == {True: branches}, assigned
    assert not theirs, f"ultralytics' assigner or dense BCE ran: {theirs}"
    # the BCE on class indices, RotatedBboxLoss's ProbIoU, and (reg_max 16) the decode fused
    assert ours["binary_cross_entropy_with_logits"] == branches and ours["probiou"] == branches
    assert ours["distribution_integral"] == (0 if "26" in cfg else 1), ours
    assert lp["box_loss"] > 0
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


def _pose_batch():
    """People in 3 images (image 1 without any), COCO's 17 keypoints: visible (2), occluded
    (1), absent (0, at 0, 0), one person with no visible keypoint (ultralytics' box-IoU
    fallback in YOLO26-pose's assigner), image order."""
    g = torch.Generator().manual_seed(5)
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.6], [0.25, 0.3, 0.15, 0.4], [0.7, 0.6, 0.2, 0.5],
                          [0.4, 0.5, 0.6, 0.8], [0.8, 0.2, 0.1, 0.2]])
    kp = boxes[:, None, :2] + (torch.rand(5, 17, 2, generator=g) - 0.5) * boxes[:, None, 2:]
    vis = torch.randint(0, 3, (5, 17), generator=g).float()
    vis[4] = 0
    kp = torch.where(vis[..., None] > 0, kp, 0)
    return {"batch_idx": torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0]), "cls": torch.zeros(5, 1),
            "bboxes": boxes, "keypoints": torch.cat([kp, vis[..., None]], -1)}


@pytest.mark.parametrize("cfg", ["yolo11n-pose.yaml", "yolo26n-pose.yaml"])
def test_yolo_pose_steps_match(cfg):
    """YOLO11n-pose (v8PoseLoss: its detection part on the fused assignment and index BCE, its
    keypoint losses on the foreground's keypoints gathered from the head's output) and
    YOLO26n-pose (PoseLoss26, both E2ELoss branches: the assignment on the fused keypoint
    assigner from the logits (ultralytics' gate and OKS never ran), the BCE on its class
    indices (no dense BCE ran); the keypoint, visibility and RLE losses ultralytics', on the
    foreground's keypoints and sigmas): loss items (rle_loss included) and
    every parameter's gradient as close to float64 as ultralytics' own float32 step; an image
    without people, occluded and absent keypoints, a person without a visible keypoint."""
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import tal as T
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    batch = _pose_batch()
    model = _yolo_model(cfg)
    m64 = copy.deepcopy(model).double()
    l64, g64 = _yolo_step(m64, x.double(), batch, patched=False)
    l32, g32 = _yolo_step(model, x, batch, patched=False)
    from ultralytics.utils import loss as L

    decoded, assigned, theirs = collections.Counter(), collections.Counter(), collections.Counter()
    real = dl.task_aligned_assign
    with pytest.MonkeyPatch.context() as mp:
        for c in (L.v8PoseLoss, L.PoseLoss26):
            f = c.__dict__["kpts_decode"].__func__
            mp.setattr(c, "kpts_decode", staticmethod(
                lambda *a, _f=f, _c=c.__name__: decoded.update([_c]) or _f(*a)))
        mp.setattr(dl, "task_aligned_assign", lambda *a, **k: assigned.update(
            ["keypoints" if "pd_kpts" in k else "boxes"]) or real(*a, **k))
        for name in ("select_candidates_in_gts", "pair_overlaps"):
            orig = getattr(T.PoseTaskAlignedAssigner, name)
            mp.setattr(T.PoseTaskAlignedAssigner, name,
                       lambda *a, _o=orig, _n=name, **k: theirs.update([_n]) or _o(*a, **k))
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        mp.setattr(torch.nn.functional, "binary_cross_entropy_with_logits",
                   lambda inp, *a, **k: theirs.update(["dense BCE"] if inp.dim() == 3 else []) or bce(inp, *a, **k))
        lp, gp = _yolo_step(model, x, batch, patched=True)
    # the foreground's keypoints only: no whole-output decode
    assert not decoded, decoded
    assert assigned == ({"boxes": 1} if "11" in cfg else {"keypoints": 2}), assigned
    assert not theirs, f"ultralytics' keypoint assigner or the dense BCE ran: {theirs}"
    assert lp["pose_loss"] > 0 and lp["box_loss"] > 0
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


@pytest.mark.parametrize("cfg", ["yolo11n-pose.yaml", "yolo26n-pose.yaml"])
def test_yolo_pose_step_without_people(cfg):
    """A batch without a person: ultralytics' DDP lines keep the keypoints, sigmas and flow
    model in the graph; the patched step gives every parameter the gradient it gets there
    (the same set: DDP requires it) and the same loss items."""
    _require("ultralytics")
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    batch = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4),
             "keypoints": torch.zeros(0, 17, 3)}
    model = _yolo_model(cfg)
    l64, g64 = _yolo_step(copy.deepcopy(model).double(), x.double(), batch, patched=False)
    lu, gu = _yolo_step(model, x, batch, patched=False)
    lp, gp = _yolo_step(model, x, batch, patched=True)
    assert sorted(gu) == sorted(gp) == sorted(g64)
    _check_close_as_own_fp32(lu, gu, lp, gp, l64, g64)


def test_ultralytics_pose_assigner_is_routed():
    """PoseTaskAlignedAssigner (PoseLoss26's): the exact class on the fused assigner (its
    anc_strides stored by its forward, as ultralytics' does), its outputs ultralytics'
    (float64: the scores to 1e-13); a subclass, or keypoints on another device type, keep
    ultralytics' code."""
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import tal as T
    from assign_scenes import pose_parts, scene

    from test_assign import compare

    inputs, st, pk, gk, sig = pose_parts(scene(B=2, M=6, seed=1, dtype=torch.float64, big=True), seed=1)
    calls = collections.Counter()
    real = dl.task_aligned_assign

    class Sub(T.PoseTaskAlignedAssigner):
        pass

    kw = dict(topk=10, num_classes=5, alpha=0.5, beta=6.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "task_aligned_assign", lambda *a, **k: calls.update(
            ["keypoints" if "pd_kpts" in k else "other"]) or real(*a, **k))
        ref = T.PoseTaskAlignedAssigner(sig, **kw)(*inputs, st, pd_kpts=pk, gt_kpts=gk)
        with dl.patched():
            a = T.PoseTaskAlignedAssigner(sig, **kw)
            out = a(*inputs, st, pd_kpts=pk, gt_kpts=gk)
            assert calls == {"keypoints": 1}, calls
            assert a.anc_strides is st
            sub = Sub(sig, **kw)(*inputs, st, pd_kpts=pk, gt_kpts=gk)
            assert calls == {"keypoints": 1}, calls  # not routed
    compare(ref, out, exact_scores=False)
    # (its CIoU fallback is the routed bbox_iou, without the 1e-7 ultralytics adds to heights)
    compare(ref, sub, check_scores=False)


def test_ultralytics_rotated_assigner_is_routed():
    """RotatedTaskAlignedAssigner (v8OBBLoss's): the exact class on the fused assigner, its
    outputs ultralytics' (float64: the scores to 1e-13); a subclass keeps ultralytics' code."""
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import tal as T
    from assign_scenes import rotated_scene

    from test_assign import compare

    inputs = rotated_scene(B=2, M=6, seed=1, dtype=torch.float64)
    calls = collections.Counter()
    real = dl.task_aligned_assign

    class Sub(T.RotatedTaskAlignedAssigner):
        pass

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "task_aligned_assign", lambda *a, **k: calls.update([k.get("rotated")]) or real(*a, **k))
        ref = T.RotatedTaskAlignedAssigner(topk=10, num_classes=5, alpha=0.5, beta=6.0)(*inputs)
        with dl.patched():
            out = T.RotatedTaskAlignedAssigner(topk=10, num_classes=5, alpha=0.5, beta=6.0)(*inputs)
            assert calls == {True: 1}, calls
            sub = Sub(topk=10, num_classes=5, alpha=0.5, beta=6.0)(*inputs)
            assert calls == {True: 1}, calls  # not routed
    compare(ref, out, exact_scores=False)
    for a, b in zip(ref, sub):
        assert torch.equal(a, b)


def test_ultralytics_probiou_is_routed_and_indistinguishable():
    """loss.probiou (RotatedBboxLoss's): ultralytics' values, gradients, shape and dtype, on
    the fused kernel; mixed dtypes promoted as torch would; the wrong row width is
    ultralytics' own error."""
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L
    from ultralytics.utils import metrics as M

    gen = torch.Generator().manual_seed(0)
    a = torch.cat([torch.rand(50, 2, generator=gen) * 20, torch.rand(50, 2, generator=gen) * 5 + 1,
                   torch.rand(50, 1, generator=gen) * 3], 1).double()
    b = a + torch.randn(50, 5, generator=gen, dtype=torch.float64) * 0.3
    calls = collections.Counter()
    real = dl.DF.probiou
    with pytest.MonkeyPatch.context() as mp, dl.patched():
        mp.setattr(dl.DF, "probiou", lambda *x, **k: calls.update(["ours"]) or real(*x, **k))
        for ciou, floor in ((False, 0.01), (True, 0.0)):
            p1, p2 = a.clone().requires_grad_(), b.clone().requires_grad_()
            q1, q2 = a.clone().requires_grad_(), b.clone().requires_grad_()
            out = L.probiou(p1, p2, CIoU=ciou, floor=floor)
            ref = M.probiou(q1, q2, CIoU=ciou, floor=floor)
            assert out.shape == ref.shape == (50, 1) and out.dtype == ref.dtype
            g = torch.rand(50, 1, generator=gen, dtype=torch.float64)
            for x, y in zip(torch.autograd.grad(out, (p1, p2), g) + (out,),
                            torch.autograd.grad(ref, (q1, q2), g) + (ref,)):
                torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
        assert L.probiou(a.float(), b).dtype == M.probiou(a.float(), b).dtype == torch.float64
        assert calls["ours"] == 3
        with pytest.raises(Exception) as theirs:
            M.probiou(a[:, :4], b[:, :4])
        with pytest.raises(type(theirs.value)):
            L.probiou(a[:, :4], b[:, :4])
        assert calls["ours"] == 3


def test_ultralytics_obb_loss_with_another_assigner_falls_back():
    """v8OBBLoss with a subclass of the rotated assigner: ultralytics' own step (only its BCE
    fused), the same loss as unpatched."""
    _require("ultralytics")
    import math

    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import tal as T

    class Sub(T.RotatedTaskAlignedAssigner):
        pass

    model = _yolo_model("yolo11n-obb.yaml")
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    batch = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [3.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4, 0.3], [0.3, 0.6, 0.2, 0.3, -math.pi / 4]])}
    crit = model.init_criterion()
    crit.assigner = Sub(topk=10, num_classes=crit.nc, alpha=0.5, beta=6.0,
                        stride=crit.stride.tolist())
    preds = model(x)
    ref, ref_items = crit(preds, batch)
    calls = collections.Counter()
    real = dl.task_aligned_assign
    with pytest.MonkeyPatch.context() as mp, dl.patched():
        mp.setattr(dl, "task_aligned_assign", lambda *a, **k: calls.update(["x"]) or real(*a, **k))
        out, items = crit(preds, batch)
    assert not calls  # the subclass: ultralytics' assignment
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_ultralytics_unpatch_restores_the_originals():
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L
    from ultralytics.utils import tal as T
    from ultralytics.models.utils import loss as RL, ops as RO

    def snapshot():
        return [L.v8DetectionLoss.__dict__["get_assigned_targets_and_loss"],
                L.v8DetectionLoss.__dict__["bbox_decode"], L.bbox_iou, T.bbox_iou,
                T.TaskAlignedAssigner.__dict__["forward"],
                L.DFLoss.__dict__["__call__"], L.VarifocalLoss.__dict__["forward"],
                L.FocalLoss.__dict__["forward"],
                L.v8SegmentationLoss.__dict__["calculate_segmentation_loss"],
                L.v8SegmentationLoss.__dict__["loss"], L.v8OBBLoss.__dict__["loss"],
                L.v8OBBLoss.__dict__["bbox_decode"], L.probiou, L.v8PoseLoss.__dict__["loss"],
                L.PoseLoss26.__dict__["loss"], RL.bbox_iou, RO.bbox_iou,
                RO.HungarianMatcher.__dict__["forward"], RL.DETRLoss.__dict__["_get_loss_class"]]

    before = snapshot()
    dl.patch()
    dl.patch()  # idempotent: no wrapper around a wrapper
    during = snapshot()
    assert dl.is_patched() and all(a is not b for a, b in zip(before, during))
    assert during[0].__wrapped__ is before[0]
    dl.unpatch()
    assert not dl.is_patched() and all(a is b for a, b in zip(before, snapshot()))
    with dl.patched():
        assert L.bbox_iou is not before[2]
    assert all(a is b for a, b in zip(before, snapshot()))
    dl.unpatch()  # unpatching twice is harmless


@pytest.mark.parametrize("gamma,alpha", [(1.5, 0.25), (2.0, 0.0)])
def test_ultralytics_focal_and_varifocal_match(gamma, alpha):
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils.loss import FocalLoss, VarifocalLoss

    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 300, 8, generator=g, dtype=torch.float64) * 3).float()
    label = (torch.rand(2, 300, 8, generator=g) < 0.1).float()
    score = torch.rand(2, 300, 8, generator=g) * label
    for crit, args in ((FocalLoss(gamma=gamma, alpha=alpha), (label,)),
                       (VarifocalLoss(gamma=gamma, alpha=0.75), (score, label))):
        outs = []
        for patched in (False, True):
            xi = x.clone().requires_grad_()
            with (dl.patched() if patched else contextlib.nullcontext()):
                out = crit(xi, *args)
            (gx,) = torch.autograd.grad(out, xi)
            outs.append((out.double(), gx.double()))
        xd = x.double().requires_grad_()
        ref = crit(xd, *[a.double() for a in args])
        (gref,) = torch.autograd.grad(ref, xd)
        (o32, g32), (op, gp) = outs
        assert (op - ref).abs() <= 2 * (o32 - ref).abs() + 8 * F32_EPS * ref.abs()
        own = (g32 - gref).norm() / gref.norm()
        assert (gp - gref).norm() / gref.norm() <= 2 * own + 4 * F32_EPS


def test_ultralytics_missing_name_fails_loudly(monkeypatch):
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L

    monkeypatch.delattr(L, "DFLoss")
    before = L.__dict__["bbox_iou"]
    with pytest.raises(RuntimeError, match=r"ultralytics \S+ has no .*DFLoss.*Nothing was patched"):
        dl.patch()
    assert not dl.is_patched() and L.bbox_iou is before


# ------------------------------------------------------------------------ torchvision
def _tv_model(kind, loss_type):
    from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn

    torch.manual_seed(0)
    make = retinanet_resnet50_fpn if kind == "retinanet" else fcos_resnet50_fpn
    model = make(weights=None, weights_backbone=None, num_classes=5, min_size=160, max_size=160)
    if loss_type is not None:
        model.head.regression_head._loss_type = loss_type  # RetinaNet: l1 (default) or *iou
    model.train()
    # the backbone's BatchNorm on its running statistics: with batch statistics of two
    # 160-pixel images (5 x 5 maps deep down) float32 itself is 2% off float64 in the
    # gradients, too noisy a yardstick; the losses under test are unaffected
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


_IMGS_SEED = 3


def _tv_step(model, dtype, patched):
    import detloss_cuda.integrations.torchvision as dl

    g = torch.Generator().manual_seed(_IMGS_SEED)
    imgs = [torch.rand(3, 160, 160, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 80, 100], [50, 50, 150, 120]], dtype=dtype),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[30.0, 10, 90, 70]], dtype=dtype),
                "labels": torch.tensor([2])}]
    model.zero_grad(set_to_none=True)
    with (dl.patched() if patched else contextlib.nullcontext()):
        losses = model(imgs, targets)
        sum(losses.values()).backward()
    return {k: v.detach().double() for k, v in losses.items()}, _grads(model)


@pytest.mark.parametrize("kind,loss_type", [("retinanet", None), ("retinanet", "giou"),
                                            ("retinanet", "ciou"), ("fcos", None)])
def test_torchvision_step_matches(kind, loss_type, monkeypatch):
    _require("torchvision")
    import detloss_cuda.integrations.torchvision as dl

    model = _tv_model(kind, loss_type)
    l64, g64 = _tv_step(copy.deepcopy(model).double(), torch.float64, patched=False)
    l32, g32 = _tv_step(model, torch.float32, patched=False)
    spy = Spy(dl.DF)
    monkeypatch.setattr(dl, "DF", spy)
    lp, gp = _tv_step(model, torch.float32, patched=True)
    assert spy.calls["sigmoid_focal_loss"] >= 1, spy.calls
    if loss_type == "giou" or kind == "fcos":
        assert spy.calls["generalized_box_iou_loss"] >= 1, spy.calls
    if loss_type == "ciou":
        assert spy.calls["complete_box_iou_loss"] >= 1, spy.calls
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


def test_torchvision_unpatch_restores_the_originals():
    _require("torchvision")
    import torchvision.ops as ops
    from torchvision.models.detection import _utils, fcos, retinanet
    from torchvision.ops import focal_loss, giou_loss

    import detloss_cuda.integrations.torchvision as dl

    def snapshot():
        return [ops.sigmoid_focal_loss, focal_loss.sigmoid_focal_loss,
                retinanet.sigmoid_focal_loss, fcos.sigmoid_focal_loss,
                ops.generalized_box_iou_loss, giou_loss.generalized_box_iou_loss,
                _utils.generalized_box_iou_loss, fcos.generalized_box_iou_loss,
                ops.distance_box_iou_loss, _utils.distance_box_iou_loss,
                ops.complete_box_iou_loss, _utils.complete_box_iou_loss]

    before = snapshot()
    with dl.patched():
        during = snapshot()
        assert all(a is not b for a, b in zip(before, during))
        assert retinanet.sigmoid_focal_loss is ops.sigmoid_focal_loss  # one wrapper, shared
    assert all(a is b for a, b in zip(before, snapshot()))


def test_torchvision_falls_back_for_what_the_kernels_do_not_take():
    _require("torchvision")
    import torchvision.ops as ops

    import detloss_cuda.integrations.torchvision as dl

    b1 = torch.tensor([[0, 0, 10, 10]])  # integer boxes: torchvision's own code handles them
    b2 = torch.tensor([[5, 5, 15, 15]])
    want = ops.generalized_box_iou_loss(b1.float(), b2.float())
    with dl.patched():
        x = torch.randn(4, 3, requires_grad=True)
        t = torch.rand(4, 3, requires_grad=True)  # a target that requires grad: theirs
        out = ops.sigmoid_focal_loss(x, t, reduction="sum")
        out.backward()
        assert t.grad is not None
        got = ops.generalized_box_iou_loss(b1.float(), b2.float())
    torch.testing.assert_close(got, want)


def test_missing_library_says_how_to_install(monkeypatch):
    import sys

    import detloss_cuda.integrations.ultralytics as dl

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # `import ultralytics` now fails
    with pytest.raises(ImportError, match=r"pip install 'detloss_cuda\[ultralytics\]'"):
        dl.patch()
