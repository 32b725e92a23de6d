"""End-to-end rows: the loss part of one training step of a real
detector (forward + backward of the loss only, the model's outputs fixed), patched
("fused") vs unpatched ("eager"). The ops are registered only when the library imports.

* ``yolo_loss``: ultralytics ``v8DetectionLoss`` of a YOLOv8n head (80 classes, reg_max 16)
  at 640 x 640 (8400 anchors per image), 8 ground-truth boxes per image; size = images.
  Includes the task-aligned assignment, as in training.
* ``yolo_seg_loss`` / ``yolo26seg_loss``: ultralytics ``v8SegmentationLoss`` of a
  YOLO11n-seg head and ``E2ELoss`` of two ``SegmentLoss26`` of a YOLO26n-seg head (its
  semantic branch too) at 640 x 640: 32 prototypes of 160 x 160, ``overlap_mask`` instance
  maps, 8 objects per image; size = images. Includes the assignment (YOLO26-seg's the
  mask-aware one) and the mask loss.
* ``yolo_obb_loss`` / ``yolo26obb_loss``: ultralytics ``v8OBBLoss`` of a YOLO11n-obb head
  and ``E2ELoss`` of two ``v8OBBLoss`` of a YOLO26n-obb head, DOTA-like: 15 classes at
  1024 x 1024 (21,504 anchors per image), 64 rotated boxes per image (sides 8-72 px, any
  angle); size = images. Includes the rotated assignment, ProbIoU, DFL and angle losses.
* ``yolo_pose_loss`` / ``yolo26pose_loss``: ultralytics ``v8PoseLoss`` of a YOLO11n-pose head
  and ``E2ELoss`` of two ``PoseLoss26`` of a YOLO26n-pose head (its RLE term through the flow
  model too), COCO keypoints (17, one class) at 640 x 640, 8 people per image; size = images.
  Includes the assignment (YOLO26-pose's keypoint-aware one).
* ``retinanet_loss``: torchvision ``RetinaNet.compute_loss`` (91 classes, GIoU box loss) at
  512 x 512 (49104 anchors per image), 8 boxes per image; size = images. Includes the
  anchor matching.
* ``rtdetr_loss``: transformers ``RTDetrForObjectDetectionLoss`` with RT-DETR's default
  config (80 classes, 300 queries, 6 decoder layers: the last layer's, 5 auxiliary and the
  encoder's top-k losses: VFL + L1 + GIoU each, with a Hungarian matching each), 8 boxes per
  image; size = images. Includes the matching.
* ``dfine_loss`` / ``deimv2_loss``: transformers ``DFineForObjectDetectionLoss`` /
  ``Deimv2ForObjectDetectionLoss`` with the default configs (80 classes, 300 queries, 6
  decoder layers, 32 bins: VFL (D-FINE) or MAL (DEIMv2), L1, GIoU, FGL and DDF each, a
  matching each), 8 boxes per image; size = images.
* ``ul_rtdetr_loss``: ultralytics ``RTDETRDetectionLoss`` (RT-DETR-l's head: 80 classes, 300
  queries, the encoder's proposals and six decoder layers: VFL + L1 + GIoU and a matching
  each), 8 boxes per image, no denoising groups; size = images.
* ``yolov5_loss``: YOLOv5 ``ComputeLoss`` of a yolov5s head (80 classes, 3 anchors, 640 x
  640: 25200 predictions per image), hyp.scratch-low, 8 boxes per image; size = images.
  Includes its target building.
"""
import importlib.util

import torch


def _have(name):
    return importlib.util.find_spec(name) is not None


_YOLO = {}


def _yolo_model():
    if "model" not in _YOLO:
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel

        m = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
        m.args = get_cfg()
        _YOLO["model"] = m
    return _YOLO["model"]


def _boxes(n_img, per_img, size, gen):
    xy = torch.rand(n_img * per_img, 2, generator=gen) * 0.7 + 0.15
    wh = torch.rand(n_img * per_img, 2, generator=gen) * 0.25 + 0.05
    return xy, wh


def yolo_inputs(size, dtype, device, gen):
    from ultralytics.utils.loss import v8DetectionLoss

    b = max(1, int(size))
    model = _yolo_model().to(device)
    crit = v8DetectionLoss(model)
    hw = [(80, 80), (40, 40), (20, 20)]  # strides 8, 16, 32 at 640 x 640
    a = sum(h * w for h, w in hw)
    # the head's two outputs, separate tensors as ultralytics' Detect returns them: box bins
    # and class logits (mostly confident negatives, as an initialised head's)
    boxes = (torch.randn(b, 64, a, generator=gen) * 2).to(device=device, dtype=dtype)
    x = (torch.randn(b, 80, a, generator=gen) * 2 - 4).to(device=device, dtype=dtype)
    feats = [torch.empty(b, 1, h, w, device=device, dtype=dtype) for h, w in hw]
    per = 8
    xy, wh = _boxes(b, per, 640, gen)
    batch = {"batch_idx": torch.arange(b).repeat_interleave(per).float().to(device),
             "cls": torch.randint(0, 80, (b * per, 1), generator=gen).float().to(device),
             "bboxes": torch.cat([xy, wh], 1).to(device)}
    return {"x": x, "boxes": boxes, "grad_leaves": [x, boxes], "crit": crit, "feats": feats,
            "batch": batch}


def _yolo_loss(inp):
    preds = {"boxes": inp["boxes"], "scores": inp["x"], "feats": inp["feats"]}
    loss, _ = inp["crit"](preds, inp["batch"])
    return loss.sum()


def yolo_fused(inp):
    from ..integrations import ultralytics as dl

    with dl.patched():
        return _yolo_loss(inp)


def _seg_model(cfg):
    if cfg not in _YOLO:
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import SegmentationModel

        m = SegmentationModel(cfg, nc=80, verbose=False)
        m.args = get_cfg()
        _YOLO[cfg] = m
    return _YOLO[cfg]


def _seg_inputs(cfg, size, dtype, device, gen):
    b = max(1, int(size))
    model = _seg_model(cfg).to(device)
    crit = model.init_criterion()
    hw = [(80, 80), (40, 40), (20, 20)]
    a = sum(h * w for h, w in hw)
    reg = 4 * model.model[-1].reg_max
    d = dict(device=device, dtype=dtype)
    boxes = (torch.randn(b, reg, a, generator=gen) * 2).to(**d)
    x = (torch.randn(b, 80, a, generator=gen) * 2 - 4).to(**d)
    coef = torch.randn(b, 32, a, generator=gen).to(**d)
    proto = torch.randn(b, 32, 160, 160, generator=gen).to(**d)
    feats = [torch.empty(b, 1, h, w, **d) for h, w in hw]
    per = 8
    xy, wh = _boxes(b, per, 640, gen)
    masks = torch.zeros(b, 160, 160)
    sem = torch.zeros(b, 160, 160, dtype=torch.long)
    cls = torch.randint(0, 80, (b * per, 1), generator=gen)
    for i, (c, w, k) in enumerate(zip(xy.tolist(), wh.tolist(), cls.view(-1).tolist())):
        x0, y0 = int((c[0] - w[0] / 2) * 160), int((c[1] - w[1] / 2) * 160)
        x1, y1 = int((c[0] + w[0] / 2) * 160), int((c[1] + w[1] / 2) * 160)
        masks[i // per, y0:y1, x0:x1] = i % per + 1
        sem[i // per, y0:y1, x0:x1] = k
    batch = {"batch_idx": torch.arange(b).repeat_interleave(per).float().to(device),
             "cls": cls.float().to(device), "bboxes": torch.cat([xy, wh], 1).to(device),
             "masks": masks.to(device), "sem_masks": sem.to(device)}
    preds = {"boxes": boxes, "scores": x, "feats": feats, "mask_coefficient": coef, "proto": proto}
    leaves = [x, boxes, coef, proto]
    if "26" in cfg:  # E2ELoss: two branches; the semantic head's logits at stride 8
        semantic = torch.randn(b, 80, 80, 80, generator=gen).to(**d)
        preds = dict(preds, proto=(proto, semantic))
        preds = {"one2many": preds, "one2one": dict(preds)}
        leaves.append(semantic)
    return {"x": x, "grad_leaves": leaves, "crit": crit, "preds": preds, "batch": batch}


def _crit_loss(inp):
    loss, _ = inp["crit"](inp["preds"], inp["batch"])
    return loss.sum()


def _crit_fused(inp):
    from ..integrations import ultralytics as dl

    with dl.patched():
        return _crit_loss(inp)


def _obb_inputs(cfg, size, dtype, device, gen):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import OBBModel

    if cfg not in _YOLO:
        m = OBBModel(cfg, nc=15, verbose=False)
        m.args = get_cfg()
        _YOLO[cfg] = m
    model = _YOLO[cfg].to(device)
    crit = model.init_criterion()
    b, per = max(1, int(size)), 64
    hw = [(128, 128), (64, 64), (32, 32)]  # strides 8, 16, 32 at 1024 x 1024
    a = sum(h * w for h, w in hw)
    d = dict(device=device, dtype=dtype)
    boxes = (torch.randn(b, 4 * model.model[-1].reg_max, a, generator=gen) * 2).to(**d)
    x = (torch.randn(b, 15, a, generator=gen) * 2 - 4).to(**d)
    angle = ((torch.rand(b, 1, a, generator=gen) - 0.25) * 3.14159).to(**d)  # the head's range
    feats = [torch.empty(b, 1, h, w, **d) for h, w in hw]
    xy = torch.rand(b * per, 2, generator=gen) * 0.9 + 0.05
    wh = torch.rand(b * per, 2, generator=gen) * (64 / 1024) + 8 / 1024
    r = (torch.rand(b * per, 1, generator=gen) - 0.5) * 3.14
    batch = {"batch_idx": torch.arange(b).repeat_interleave(per).float().to(device),
             "cls": torch.randint(0, 15, (b * per, 1), generator=gen).float().to(device),
             "bboxes": torch.cat([xy, wh, r], 1).to(device)}
    preds = {"boxes": boxes, "scores": x, "angle": angle, "feats": feats}
    if "26" in cfg:
        preds = {"one2many": preds, "one2one": dict(preds)}
    return {"x": x, "grad_leaves": [x, boxes, angle], "crit": crit, "preds": preds, "batch": batch}


def _pose_inputs(cfg, size, dtype, device, gen):
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import PoseModel

    if cfg not in _YOLO:
        m = PoseModel(cfg, nc=1, data_kpt_shape=(17, 3), verbose=False)
        m.args = get_cfg()
        _YOLO[cfg] = m
    model = _YOLO[cfg].to(device)
    crit = model.init_criterion()
    b, per = max(1, int(size)), 8
    hw = [(80, 80), (40, 40), (20, 20)]
    a = sum(h * w for h, w in hw)
    d = dict(device=device, dtype=dtype)
    boxes = (torch.randn(b, 4 * model.model[-1].reg_max, a, generator=gen) * 2).to(**d)
    x = (torch.randn(b, 1, a, generator=gen) * 2 - 4).to(**d)
    kpts = torch.randn(b, 51, a, generator=gen).to(**d)
    feats = [torch.empty(b, 1, h, w, **d) for h, w in hw]
    xy, wh = _boxes(b, per, 640, gen)
    kp = xy[:, None] + (torch.rand(b * per, 17, 2, generator=gen) - 0.5) * wh[:, None]
    vis = torch.randint(0, 3, (b * per, 17, 1), generator=gen).float()
    batch = {"batch_idx": torch.arange(b).repeat_interleave(per).float().to(device),
             "cls": torch.zeros(b * per, 1, device=device), "bboxes": torch.cat([xy, wh], 1).to(device),
             "keypoints": torch.cat([kp * (vis > 0), vis], -1).to(device)}
    preds = {"boxes": boxes, "scores": x, "kpts": kpts, "feats": feats}
    leaves = [x, boxes, kpts]
    if "26" in cfg:
        sigma = torch.randn(b, 34, a, generator=gen).to(**d)
        preds = dict(preds, kpts_sigma=sigma)
        preds = {"one2many": preds, "one2one": dict(preds)}
        leaves.append(sigma)
    return {"x": x, "grad_leaves": leaves, "crit": crit, "preds": preds, "batch": batch}


_RN = {}


def _retinanet():
    if "model" not in _RN:
        from torchvision.models.detection import retinanet_resnet50_fpn

        m = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
        m.head.regression_head._loss_type = "giou"
        _RN["model"] = m
    return _RN["model"]


def retinanet_inputs(size, dtype, device, gen):
    from torchvision.models.detection.image_list import ImageList

    b = max(1, int(size))
    model = _retinanet()
    img = ImageList(torch.empty(b, 3, 512, 512), [(512, 512)] * b)
    feats = [torch.empty(b, 1, 512 // s, 512 // s) for s in (8, 16, 32, 64, 128)]
    anchors = [a.to(device=device, dtype=dtype) for a in model.anchor_generator(img, feats)]
    n = anchors[0].shape[0]
    x = torch.randn(b, n, 91 + 4, generator=gen)
    x[..., :91] -= 4.6  # RetinaNet's prior: p = 0.01
    x = x.to(device=device, dtype=dtype)
    per = 8
    targets = []
    for _ in range(b):
        xy, wh = _boxes(1, per, 512, gen)
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1) * 512
        targets.append({"boxes": boxes.to(device=device, dtype=dtype),
                        "labels": torch.randint(1, 91, (per,), generator=gen).to(device)})
    return {"x": x, "model": model, "anchors": anchors, "targets": targets}


def _retinanet_loss(inp):
    x = inp["x"]
    head = {"cls_logits": x[..., :91], "bbox_regression": x[..., 91:]}
    losses = inp["model"].compute_loss(inp["targets"], head, inp["anchors"])
    return sum(losses.values())


def retinanet_fused(inp):
    from ..integrations import torchvision as dl

    with dl.patched():
        return _retinanet_loss(inp)


_RT = {}


def _rtdetr_config():
    if "config" not in _RT:
        from transformers import RTDetrConfig

        _RT["config"] = RTDetrConfig()  # 80 classes, 300 queries, 6 decoder layers
    return _RT["config"]


def rtdetr_inputs(size, dtype, device, gen):
    b = max(1, int(size))
    cfg = _rtdetr_config()
    L, Q, C = cfg.decoder_layers, cfg.num_queries, cfg.num_labels
    # every decoder layer's class logits and boxes (the last is the output), and the
    # encoder's top-k queries: leaves, as the head's outputs are
    logits = (torch.randn(b, L + 1, Q, C, generator=gen) - 3).to(device=device, dtype=dtype)
    cxcy = torch.rand(b, L + 1, Q, 2, generator=gen) * 0.8 + 0.1
    wh = torch.rand(b, L + 1, Q, 2, generator=gen) * 0.2 + 0.02
    boxes = torch.cat([cxcy, wh], -1).to(device=device, dtype=dtype)
    per = 8
    labels = []
    for _ in range(b):
        xy, twh = _boxes(1, per, 640, gen)
        labels.append({"class_labels": torch.randint(0, C, (per,), generator=gen).to(device),
                       "boxes": torch.cat([xy, twh], 1).to(device=device, dtype=dtype)})
    return {"x": logits, "boxes": boxes, "grad_leaves": [logits, boxes], "labels": labels,
            "config": cfg, "device": device}


def _rtdetr_loss(inp):
    from transformers.loss.loss_rt_detr import RTDetrForObjectDetectionLoss

    x, bx = inp["x"], inp["boxes"]
    loss, _, _ = RTDetrForObjectDetectionLoss(
        logits=x[:, -1], labels=inp["labels"], device=inp["device"], pred_boxes=bx[:, -1],
        config=inp["config"], outputs_class=x[:, 1:], outputs_coord=bx[:, 1:],
        enc_topk_logits=x[:, 0], enc_topk_bboxes=bx[:, 0])
    return loss


def rtdetr_fused(inp):
    from ..integrations import transformers as dl

    with dl.patched():
        return _rtdetr_loss(inp)


def _dfine_config(kind):
    if kind not in _RT:
        import transformers

        # the defaults: 80 classes, 300 queries, 6 decoder layers, 32 bins
        _RT[kind] = getattr(transformers, {"d_fine": "DFineConfig", "deimv2": "Deimv2Config"}[kind])()
    return _RT[kind]


def dfine_inputs(kind, size, dtype, device, gen):
    """D-FINE's / DEIMv2's loss inputs: every decoder layer's logits, boxes, bin logits of the
    four edges (``4 (bins + 1)``) and reference points, and the encoder's top-k queries."""
    inp = rtdetr_inputs(size, dtype, device, gen)
    cfg = _dfine_config(kind)
    b, L = inp["x"].shape[0], cfg.decoder_layers
    Q, R = cfg.num_queries, cfg.max_num_bins + 1
    corners = torch.randn(b, L, Q, 4 * R, generator=gen).to(device=device, dtype=dtype)
    refs = inp["boxes"][:, 1:].detach().clone()
    inp.update(corners=corners, refs=refs, config=cfg, kind=kind,
               grad_leaves=inp["grad_leaves"] + [corners])
    return inp


def _dfine_loss(inp):
    from transformers.loss.loss_d_fine import DFineForObjectDetectionLoss
    from transformers.loss.loss_deimv2 import Deimv2ForObjectDetectionLoss

    fn = DFineForObjectDetectionLoss if inp["kind"] == "d_fine" else Deimv2ForObjectDetectionLoss
    x, bx = inp["x"], inp["boxes"]
    loss, _, _ = fn(
        logits=x[:, -1], labels=inp["labels"], device=inp["device"], pred_boxes=bx[:, -1],
        config=inp["config"], outputs_class=x[:, 1:], outputs_coord=bx[:, 1:],
        enc_topk_logits=x[:, 0], enc_topk_bboxes=bx[:, 0], predicted_corners=inp["corners"],
        initial_reference_points=inp["refs"])
    return loss


def dfine_fused(inp):
    from ..integrations import transformers as dl

    with dl.patched():
        return _dfine_loss(inp)


def ul_rtdetr_inputs(size, dtype, device, gen):
    """ultralytics' RTDETRDetectionLoss (RT-DETR-l: 80 classes, 300 queries, the encoder's
    proposals and six decoder layers), 8 boxes per image, no denoising groups."""
    from ultralytics.models.utils.loss import RTDETRDetectionLoss

    b = max(1, int(size))
    x = (torch.randn(7, b, 300, 80, generator=gen) - 3).to(device=device, dtype=dtype)
    cxcy = torch.rand(7, b, 300, 2, generator=gen) * 0.8 + 0.1
    wh = torch.rand(7, b, 300, 2, generator=gen) * 0.2 + 0.02
    boxes = torch.cat([cxcy, wh], -1).to(device=device, dtype=dtype)
    per = 8
    xy, twh = _boxes(b, per, 640, gen)
    batch = {"cls": torch.randint(0, 80, (b * per,), generator=gen).to(device),
             "bboxes": torch.cat([xy, twh], 1).to(device=device),
             "batch_idx": torch.arange(b).repeat_interleave(per).to(device),
             "gt_groups": [per] * b}
    return {"x": x, "boxes": boxes, "grad_leaves": [x, boxes], "batch": batch,
            "criterion": RTDETRDetectionLoss(nc=80, use_vfl=True)}


def _ul_rtdetr_loss(inp):
    return sum(inp["criterion"]((inp["boxes"], inp["x"]), inp["batch"]).values())


def ul_rtdetr_fused(inp):
    from ..integrations import ultralytics as dl

    with dl.patched():
        return _ul_rtdetr_loss(inp)


_Y5 = {}


def _yolov5():
    if "model" not in _Y5:
        import os
        import warnings

        import yaml
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import yolov5
            from yolov5.models.yolo import Model
        root = os.path.dirname(yolov5.__file__)
        with open(os.path.join(root, "data", "hyps", "hyp.scratch-low.yaml")) as f:
            hyp = yaml.safe_load(f)
        import logging
        log = logging.getLogger("yolov5")
        level = log.level
        log.setLevel(logging.WARNING)  # its layer table
        try:
            m = Model(os.path.join(root, "models", "yolov5s.yaml"), ch=3, nc=80)
        finally:
            log.setLevel(level)
        m.hyp = hyp
        _Y5["model"] = m
    return _Y5["model"]


def yolov5_inputs(size, dtype, device, gen):
    b = max(1, int(size))
    model = _yolov5().to(device)
    p = []
    for s in (80, 40, 20):
        t = torch.randn(b, 3, s, s, 85, generator=gen)
        t[..., 4:] -= 4  # objectness and classes: mostly confident negatives
        p.append(t.to(device=device, dtype=dtype))
    per = 8
    xy, wh = _boxes(b, per, 640, gen)
    targets = torch.cat([torch.arange(b).repeat_interleave(per)[:, None].float(),
                         torch.randint(0, 80, (b * per, 1), generator=gen).float(), xy, wh], 1)
    return {"x": p[0], "p": p, "grad_leaves": p, "model": model, "targets": targets.to(device)}


def _yolov5_loss(inp):
    from yolov5.utils.loss import ComputeLoss

    loss, _ = ComputeLoss(inp["model"])(inp["p"], inp["targets"])
    return loss.sum()


def yolov5_fused(inp):
    from ..integrations import yolov5 as dl

    with dl.patched():
        return _yolov5_loss(inp)


def _x_bytes(inp, mode):
    n = sum(t.numel() * t.element_size() for t in inp.get("grad_leaves", [inp["x"]]))
    return n if mode == "fwd" else 2 * n  # the head outputs read; their gradient written


def ops():
    """The integration rows whose library is installed."""
    from .registry import BenchOp

    ops = {}
    if _have("ultralytics"):
        ops["yolo_loss"] = BenchOp(
            name="yolo_loss", family="e2e", unit="images (YOLOv8n, 640 px)", make=yolo_inputs,
            fused=yolo_fused, eager=_yolo_loss, bytes_moved=_x_bytes, compilable=False,
            sizes={"quick": [2], "cpu": [1, 4, 16], "cuda": [1, 16, 64]})
        # (name, config, inputs, unit, quick sizes, CPU sizes); YOLO26-seg's unpatched step
        # takes seconds: not in the quick run
        for name, cfg, make, unit, quick, cpu in (
                ("yolo_seg_loss", "yolo11n-seg.yaml", _seg_inputs, "YOLO11n-seg, 640 px", [2], [1, 4, 16]),
                ("yolo26seg_loss", "yolo26n-seg.yaml", _seg_inputs, "YOLO26n-seg, 640 px", [], [1, 4, 16]),
                ("yolo_obb_loss", "yolo11n-obb.yaml", _obb_inputs, "YOLO11n-obb, 1024 px, 64 boxes",
                 [], [1, 4, 8]),
                ("yolo26obb_loss", "yolo26n-obb.yaml", _obb_inputs, "YOLO26n-obb, 1024 px, 64 boxes",
                 [], [1, 4, 8]),
                ("yolo_pose_loss", "yolo11n-pose.yaml", _pose_inputs, "YOLO11n-pose, 640 px, 8 people",
                 [], [1, 4, 16]),
                ("yolo26pose_loss", "yolo26n-pose.yaml", _pose_inputs,
                 "YOLO26n-pose, 640 px, 8 people", [], [1, 4, 16])):
            ops[name] = BenchOp(
                name=name, family="e2e", unit=f"images ({unit})",
                make=lambda *a, cfg=cfg, make=make: make(cfg, *a), fused=_crit_fused,
                eager=_crit_loss, bytes_moved=_x_bytes, compilable=False,
                sizes={"quick": quick, "cpu": cpu, "cuda": [1, 16, 64]})
        if _have("scipy"):
            ops["ul_rtdetr_loss"] = BenchOp(
                name="ul_rtdetr_loss", family="e2e",
                unit="images (ultralytics RT-DETR-l, 300 queries, 80 classes)",
                make=ul_rtdetr_inputs, fused=ul_rtdetr_fused, eager=_ul_rtdetr_loss,
                bytes_moved=_x_bytes, compilable=False,
                sizes={"quick": [], "cpu": [1, 4, 16], "cuda": [1, 16, 64]})
    if _have("torchvision"):
        ops["retinanet_loss"] = BenchOp(
            name="retinanet_loss", family="e2e", unit="images (RetinaNet, 512 px)",
            make=retinanet_inputs, fused=retinanet_fused, eager=_retinanet_loss,
            bytes_moved=_x_bytes, compilable=False,
            sizes={"quick": [2], "cpu": [1, 4, 16], "cuda": [1, 16, 64]})
    if _have("transformers") and _have("scipy"):
        ops["rtdetr_loss"] = BenchOp(
            name="rtdetr_loss", family="e2e", unit="images (RT-DETR, 300 queries, 80 classes)",
            make=rtdetr_inputs, fused=rtdetr_fused, eager=_rtdetr_loss, bytes_moved=_x_bytes,
            compilable=False, sizes={"quick": [2], "cpu": [1, 4, 16], "cuda": [1, 16, 64]})
        for kind, unit in (("d_fine", "D-FINE"), ("deimv2", "DEIMv2")):
            ops[f"{kind.replace('_', '')}_loss"] = BenchOp(
                name=f"{kind.replace('_', '')}_loss", family="e2e",
                unit=f"images ({unit}, 300 queries, 80 classes)",
                make=lambda *a, kind=kind: dfine_inputs(kind, *a), fused=dfine_fused,
                eager=_dfine_loss, bytes_moved=_x_bytes, compilable=False,
                sizes={"quick": [], "cpu": [1, 4, 16], "cuda": [1, 16, 64]})
    if _have("yolov5"):
        ops["yolov5_loss"] = BenchOp(
            name="yolov5_loss", family="e2e", unit="images (yolov5s, 640 px)",
            make=yolov5_inputs, fused=yolov5_fused, eager=_yolov5_loss, bytes_moved=_x_bytes,
            compilable=False, sizes={"quick": [2], "cpu": [1, 4, 16], "cuda": [1, 16, 64]})
    return ops
