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
import importlib
import os

import pytest
import torch

from conftest import OpSpy

F32_EPS = torch.finfo(torch.float32).eps


def _require(name):
    if os.environ.get("DETLOSS_REQUIRE_INTEGRATIONS"):
        return importlib.import_module(name)  # CI: a missing library is a failure
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install {name})")


class Spy:
    """Counts calls into detloss_cuda.functional made by an integration module."""

    def __init__(self, mod):
        self._mod, self.calls = mod, collections.Counter()

    def __getattr__(self, name):
        f = getattr(self._mod, name)

        def counted(*a, **k):
            self.calls[name] += 1
            return f(*a, **k)
        return counted


def _grads(model):
    return {n: p.grad.double().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_rel(g, ref):
    """The worst parameter's relative gradient error."""
    return max(((g[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-300)).item() for n in ref)


def _global_rel(g, ref):
    """The relative error of all gradients together (one vector)."""
    num = sum(((g[n] - ref[n]) ** 2).sum() for n in ref)
    return (num / sum((ref[n] ** 2).sum() for n in ref)).sqrt().item()


def _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64):
    """lp, gp (patched, fp32) are as close to l64, g64 (float64) as l32, g32 (unpatched)."""
    assert l32.keys() == lp.keys() == l64.keys()
    for k in l64:
        own = (l32[k] - l64[k]).abs().max().item()
        ours = (lp[k] - l64[k]).abs().max().item()
        assert ours <= 2 * own + 8 * F32_EPS * l64[k].abs().max().item(), (k, ours, own)
    assert g32.keys() == gp.keys() == g64.keys() and len(g64) > 50
    own, ours = _max_rel(g32, g64), _max_rel(gp, g64)
    assert ours <= 2 * own + 1e-6, (ours, own)
    own, ours = _global_rel(g32, g64), _global_rel(gp, g64)
    assert ours <= 2 * own + 1e-6, (ours, own)
    # Sharper: the two float32 steps share every operation but the losses, and the backward
    # through the network is linear in the losses' gradients, which differ by float32
    # rounding (a few ulps per element): the parameter gradients may differ by that times
    # the backward's amplification (measured ~1e-6 here), far below what a wrong term,
    # factor or gradient path gives (>= 1e-3).
    direct = _global_rel(gp, g32)
    print(f"gradient error vs float64: ours {ours:.2e}, theirs {own:.2e}; ours vs theirs {direct:.2e}")
    assert direct < 1e-4, direct
    assert own < 1e-2  # the float32 step itself is sane: the comparison means something


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
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(0)
    cls = SegmentationModel if "-seg" in cfg else DetectionModel
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


def test_ultralytics_unpatch_restores_the_originals():
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import loss as L
    from ultralytics.utils import tal as T

    def snapshot():
        return [L.v8DetectionLoss.__dict__["get_assigned_targets_and_loss"],
                L.v8DetectionLoss.__dict__["bbox_decode"], L.bbox_iou, T.bbox_iou,
                T.TaskAlignedAssigner.__dict__["forward"],
                L.DFLoss.__dict__["__call__"], L.VarifocalLoss.__dict__["forward"],
                L.FocalLoss.__dict__["forward"]]

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


# ------------------------------------------------------------------ transformers (DETR family)
def _detr_models():
    """Tiny randomly initialised DETR, Deformable DETR and RT-DETR (no weights, no network;
    dropout and RT-DETR's random denoising queries off, so that steps are repeatable)."""
    T = _require("transformers")
    T.logging.set_verbosity_error()

    def resnet(cls=T.ResNetConfig):
        return cls(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                   out_features=["stage2", "stage3", "stage4"])

    small = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                 num_queries=12, num_labels=5, dropout=0.0, attention_dropout=0.0,
                 activation_dropout=0.0)
    return {
        "detr": lambda: T.DetrForObjectDetection(T.DetrConfig(
            use_timm_backbone=False, backbone_config=resnet(), use_pretrained_backbone=False,
            decoder_layers=1, auxiliary_loss=True, **small)),
        "deformable_detr": lambda: T.DeformableDetrForObjectDetection(T.DeformableDetrConfig(
            use_timm_backbone=False, backbone_config=resnet(), use_pretrained_backbone=False,
            decoder_layers=2, auxiliary_loss=True, num_feature_levels=3, encoder_n_points=2,
            decoder_n_points=2, **small)),
        "rt_detr": lambda: T.RTDetrForObjectDetection(T.RTDetrConfig(
            backbone_config=resnet(T.RTDetrResNetConfig), use_pretrained_backbone=False,
            encoder_hidden_dim=16, encoder_in_channels=[16, 16, 16],
            decoder_in_channels=[16, 16, 16], decoder_layers=2, num_denoising=0,
            decoder_n_points=2, **{k: v for k, v in small.items() if "dropout" not in k},
            dropout=0.0, activation_dropout=0.0)),
    }


def _detr_step(model, x, labels, patched):
    import detloss_cuda.integrations.transformers as dl

    model.zero_grad(set_to_none=True)
    ctx = dl.patched() if patched else contextlib.nullcontext()
    with ctx:
        out = model(pixel_values=x, labels=labels)
        out.loss.backward()
    items = {k: v.detach().double() for k, v in out.loss_dict.items() if k.startswith("loss")}
    items["loss"] = out.loss.detach().double()
    return items, _grads(model)


@pytest.mark.parametrize("arch", ["detr", "deformable_detr", "rt_detr"])
def test_detr_family_steps_match(arch, monkeypatch):
    """A training step of DETR (GIoU: the matcher's cost matrix and the matched pairs' loss),
    Deformable DETR (+ focal loss) and RT-DETR (+ VFL): every loss of the dict (auxiliary
    decoder layers' included) and every parameter's gradient as close to float64 as
    transformers' own float32 step, and the fused functions ran."""
    import detloss_cuda.integrations.transformers as dl

    torch.manual_seed(0)
    model = _detr_models()[arch]()
    model.train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g)
    labels = [{"class_labels": torch.tensor([1, 3]),
               "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.3, 0.2, 0.2]])},
              {"class_labels": torch.tensor([4]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.3]])}]
    m64 = copy.deepcopy(model).double()
    was = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the losses build float32 buffers (class weights)
    try:
        l64, g64 = _detr_step(m64, x.double(), [{k: (v.double() if v.is_floating_point() else v)
                                                  for k, v in t.items()} for t in labels], False)
    finally:
        torch.set_default_dtype(was)
    l32, g32 = _detr_step(model, x, labels, False)
    spy = Spy(dl.DF)
    monkeypatch.setattr(dl, "DF", spy)
    lp, gp = _detr_step(model, x, labels, True)
    layers = {"detr": 1, "deformable_detr": 2, "rt_detr": 2}[arch]  # each decoder layer's losses
    assert spy.calls["box_iou_matrix"] >= layers  # the matchers' GIoU cost
    assert spy.calls["generalized_box_iou_loss"] == layers + (arch == "rt_detr")  # + encoder
    if arch == "deformable_detr":
        assert spy.calls["sigmoid_focal_loss"] == layers
    if arch == "rt_detr":
        assert spy.calls["binary_cross_entropy_with_logits"] == layers + 1
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


def test_transformers_unpatch_restores_the_originals():
    _require("transformers")
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss import loss_for_object_detection as od, loss_rt_detr as rt

    before = [od.sigmoid_focal_loss, od.generalized_box_iou, od.ImageLoss.__dict__["loss_boxes"],
              rt.RTDetrLoss.__dict__["loss_labels_vfl"], rt.sigmoid_focal_loss]
    with dl.patched():
        assert dl.is_patched() and od.sigmoid_focal_loss is not before[0]
    assert not dl.is_patched()
    after = [od.sigmoid_focal_loss, od.generalized_box_iou, od.ImageLoss.__dict__["loss_boxes"],
             rt.RTDetrLoss.__dict__["loss_labels_vfl"], rt.sigmoid_focal_loss]
    assert all(a is b for a, b in zip(before, after))


def test_transformers_functions_match_and_hand_back():
    """The patched focal loss and GIoU matrix against the library's, including what they hand
    back to it: integer one-hot targets (its BCE raises), alpha outside [0, 1], a GIoU matrix
    that must be differentiated, degenerate boxes (its ValueError)."""
    _require("transformers")
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss import loss_for_object_detection as od

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 5, generator=g) * 2
    t = (torch.rand(2, 7, 5, generator=g) > 0.8).float()
    xy = torch.rand(6, 2, generator=g)
    b = torch.cat([xy, xy + torch.rand(6, 2, generator=g)], -1)
    cases = [(od.sigmoid_focal_loss, (x, t, 3.0)), (od.sigmoid_focal_loss, (x, t, 3.0, -1, 0.5)),
             (od.sigmoid_focal_loss, (x, t, 3.0, 2.0, 2.0)),
             (od.sigmoid_focal_loss, (x, t.long(), 3.0)),
             (od.generalized_box_iou, (b, b[:4])), (od.generalized_box_iou, (b.half(), b.half())),
             (od.generalized_box_iou, (b[:, [2, 1, 0, 3]], b))]
    for fn, args in cases:
        name = fn.__name__
        try:
            want = fn(*args)
        except Exception as e:  # noqa: BLE001
            want = (type(e), str(e))
        with dl.patched():
            try:
                got = getattr(od, name)(*args)
            except Exception as e:  # noqa: BLE001
                got = (type(e), str(e))
        if isinstance(want, tuple):
            assert got == want, (name, got, want)
        else:
            assert got.dtype == want.dtype and got.shape == want.shape, (name, got, want)
            torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)
    # differentiated: the library's own matrix (the loss_boxes wrapper takes the pairs)
    bg = b.clone().requires_grad_()
    with dl.patched():
        out = od.generalized_box_iou(bg, b)
    assert out.grad_fn is not None and "Detloss" not in type(out.grad_fn).__name__


# ------------------------------------------------------------------------------- yolov5
def _require_yolov5():
    """yolov5 installs apart from the other test requirements (requirements-yolov5.txt says
    why and how); CI stage 2 installs it and sets DETLOSS_REQUIRE_YOLOV5 (missing = failure)."""
    if os.environ.get("DETLOSS_REQUIRE_YOLOV5"):
        return importlib.import_module("yolov5")
    return pytest.importorskip("yolov5", reason="yolov5 is not installed: pip install --no-deps "
                               "yolov5==7.0.14 && pip install -r requirements-yolov5.txt")


def _yolov5_model(hyp_over):
    _require_yolov5()
    import warnings

    import yaml
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its pkg_resources import warns
        import yolov5
        from yolov5.models.yolo import Model
    root = os.path.dirname(yolov5.__file__)
    with open(os.path.join(root, "data", "hyps", "hyp.scratch-low.yaml")) as f:
        hyp = yaml.safe_load(f)
    hyp.update(hyp_over)
    torch.manual_seed(0)
    model = Model(os.path.join(root, "models", "yolov5s.yaml"), ch=3, nc=80)  # no weights
    model.hyp = hyp
    model.train()
    return model


def _yolov5_step(model, x, targets, patched):
    import detloss_cuda.integrations.yolov5 as dl
    from yolov5.utils.loss import ComputeLoss

    model.zero_grad(set_to_none=True)
    criterion = ComputeLoss(model)
    ctx = dl.patched() if patched else contextlib.nullcontext()
    with ctx:
        loss, items = criterion(model(x), targets)
        loss.sum().backward()
    names = ("box", "obj", "cls")
    return ({"loss": loss.detach().double().sum(), **{n: items[i].double() for i, n in enumerate(names)}},
            _grads(model))


@pytest.mark.parametrize("hyp", [{}, {"cls_pw": 1.5, "obj_pw": 0.7, "label_smoothing": 0.1},
                                 {"fl_gamma": 1.5, "cls_pw": 1.3}],
                         ids=["default", "pos_weight+smoothing", "focal"])
def test_yolov5_steps_match(hyp, monkeypatch):
    """A yolov5s.yaml training step (ComputeLoss: CIoU, objectness and class BCE with
    pos_weight, label smoothing, FocalLoss with fl_gamma > 0): loss items and every
    parameter's gradient as close to float64 as YOLOv5's own float32 step."""
    import detloss_cuda.integrations.yolov5 as dl

    model = _yolov5_model(hyp)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 128, 128, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [0, 5, 0.3, 0.6, 0.2, 0.2],
                            [1, 7, 0.6, 0.4, 0.5, 0.3], [1, 2, 0.2, 0.2, 0.1, 0.15]])
    m64 = copy.deepcopy(model).double()
    l64, g64 = _yolov5_step(m64, x.double(), targets.double(), False)
    l32, g32 = _yolov5_step(model, x, targets, False)
    spy = Spy(dl.DF)
    monkeypatch.setattr(dl, "DF", spy)
    lp, gp = _yolov5_step(model, x, targets, True)
    assert spy.calls["bbox_iou"] == 3  # one CIoU per level
    if "fl_gamma" in hyp:
        assert spy.calls["_cls_loss"] == 6  # focal: cls and obj, per level
    else:
        assert spy.calls["binary_cross_entropy_with_logits"] == 6
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


def test_yolov5_unpatch_restores_the_originals():
    _require_yolov5()
    import detloss_cuda.integrations.yolov5 as dl
    from yolov5.utils import loss as L

    before = [L.bbox_iou, L.ComputeLoss.__dict__["__call__"], L.FocalLoss.__dict__["forward"]]
    crit = dl.FusedBCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))
    x, t = torch.randn(5, 3), torch.rand(5, 3)
    with dl.patched():
        assert L.bbox_iou is not before[0]
        with OpSpy() as spy:
            crit(x, t)
        assert "detloss::cls_loss" in spy.ops
    assert [L.bbox_iou, L.ComputeLoss.__dict__["__call__"], L.FocalLoss.__dict__["forward"]] == before
    with OpSpy() as spy:  # unpatched: torch's own forward again
        out = crit(x, t)
    assert "detloss::cls_loss" not in spy.ops
    torch.testing.assert_close(out, torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))(x, t))
