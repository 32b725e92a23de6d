"""The task-aligned assigner rows: the fused assigner vs ultralytics' own (forward), for
detection (``assigner``), with YOLO26-seg's mask-aware overlap (``seg_assigner``), for
YOLO-OBB's rotated boxes (``rotated_assigner``) and with YOLO26-pose's keypoint overlap and
level gate (``pose_assigner``)."""
import importlib.util

import torch

from .registry import BenchOp, nbytes as _nbytes


def _assign_inputs(size, dtype, device, gen, num_classes=80):
    """A YOLOv8 640 px step's assignment: 8400 anchors (strides 8, 16, 32), `size` boxes per
    image (16 images; 4 at 4096 boxes, where ultralytics' (B, M, A) tensors would need ~30 GB),
    predicted boxes around the anchors, class probabilities."""
    M = max(1, int(size))
    B = 16 if M < 4096 else 4
    pts = []
    for s in (8, 16, 32):
        n = 640 // s
        y, x = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        pts.append(torch.stack([x, y], -1).view(-1, 2) * s)
    anc = torch.cat(pts)
    A = anc.shape[0]
    xy = torch.rand(B, M, 2, generator=gen) * 600 + 20
    wh = torch.rand(B, M, 2, generator=gen) * 150 + 8
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1).clamp(0, 640)
    pwh = torch.rand(B, A, 2, generator=gen) * 120 + 8
    pd = torch.cat([anc - pwh / 2, anc + pwh / 2], -1)
    scores = torch.rand(B, A, num_classes, generator=gen) * 0.1
    labels = torch.randint(0, num_classes, (B, M, 1), generator=gen).float()
    return {"x": scores.to(device=device, dtype=dtype), "pd": pd.to(device), "anc": anc.to(device),
            "labels": labels.to(device), "gt": gt.to(device),
            "mask": torch.ones(B, M, 1, device=device)}


def _assign_bytes(inp, mode):
    s = inp["x"]
    B, A, C = s.shape
    # read: boxes, anchors, gt, one score per candidate (at most B·A·C); written: the five
    # outputs, the dense [B, A, C] target scores included
    return _nbytes(inp["pd"], inp["anc"], inp["gt"], inp["labels"]) + B * A * (8 + 16 + 1 + 8 + C * s.element_size())


_ASSIGNERS = {}


def _assigner(kind):
    if kind not in _ASSIGNERS:
        if kind == "fused":
            from ..nn import TaskAlignedAssigner
        else:
            from ultralytics.utils.tal import TaskAlignedAssigner
        _ASSIGNERS[kind] = TaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0)
    return _ASSIGNERS[kind]


def _assign_run(kind):
    def run(i):
        return _assigner(kind)(i["x"], i["pd"], i["anc"], i["labels"], i["gt"], i["mask"])
    return run


def _seg_inputs(size, dtype, device, gen):
    """YOLO26-seg's assignment at 640 px: the detection row's scene (16 images, `size` objects
    each) plus 32 mask coefficients an anchor (a head's [B, 32, A], permuted), 160 x 160
    prototypes, mask_scale 1/4 and each object's bool mask (its box rasterised, with holes)."""
    inp = _assign_inputs(size, dtype, device, gen)
    B, A = inp["x"].shape[:2]
    M, H = inp["gt"].shape[1], 160
    inp["coef"] = torch.randn(B, 32, A, generator=gen).to(device=device, dtype=dtype).permute(0, 2, 1)
    inp["proto"] = torch.randn(B, 32, H, H, generator=gen).to(device=device, dtype=dtype)
    inp["scale"] = torch.full((B, 1), H / 640, device=device)
    gb = inp["gt"].cpu() / 4
    r = torch.arange(H) + 0.5
    gm = torch.empty(B, M, H, H, dtype=torch.bool)
    for b in range(B):  # (image by image: the comparison's float temporaries stay small)
        gm[b] = ((r[None, None, :] >= gb[b, :, 0, None, None]) & (r[None, None, :] < gb[b, :, 2, None, None]) &
                 (r[None, :, None] >= gb[b, :, 1, None, None]) & (r[None, :, None] < gb[b, :, 3, None, None]) &
                 (torch.rand(M, H, H, generator=gen) < 0.8))
    inp["gt_masks"] = gm.to(device)
    return inp


def _seg_bytes(inp, mode):
    B, A, _ = inp["coef"].shape
    return _assign_bytes(inp, mode) + _nbytes(inp["proto"], inp["gt_masks"]) + B * A * 4


def _seg_assigner(kind):
    key = "seg-" + kind
    if key not in _ASSIGNERS:
        if kind == "fused":
            from ..nn import SegTaskAlignedAssigner
        else:
            from ultralytics.utils.tal import SegTaskAlignedAssigner
        _ASSIGNERS[key] = SegTaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0)
    return _ASSIGNERS[key]


def _seg_run(kind):
    def run(i):
        return _seg_assigner(kind)(i["x"], i["pd"], i["anc"], i["labels"], i["gt"], i["mask"],
                                   pd_coef=i["coef"], mask_scale=i["scale"], proto=i["proto"],
                                   gt_masks=i["gt_masks"])
    return run


def _rotated_inputs(size, dtype, device, gen, num_classes=15):
    """A DOTA-like assignment (YOLO-OBB at 1024 px): 21,504 anchors (strides 8, 16, 32), 8
    images of `size` rotated boxes (xywhr, sides 8-72 px, any angle), predicted rotated boxes
    around the anchors, 15 classes' probabilities."""
    M, B, S = max(1, int(size)), 8, 1024
    pts = []
    for s in (8, 16, 32):
        n = S // s
        y, x = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        pts.append(torch.stack([x, y], -1).view(-1, 2) * s)
    anc = torch.cat(pts)
    A = anc.shape[0]
    ang = lambda *shape: (torch.rand(*shape, 1, generator=gen) - 0.5) * 3.14
    gt = torch.cat([torch.rand(B, M, 2, generator=gen) * (S - 80) + 40,
                    torch.rand(B, M, 2, generator=gen) * 64 + 8, ang(B, M)], -1)
    pd = torch.cat([anc + torch.randn(B, A, 2, generator=gen) * 4,
                    torch.rand(B, A, 2, generator=gen) * 64 + 8, ang(B, A)], -1)
    scores = torch.rand(B, A, num_classes, generator=gen) * 0.1
    labels = torch.randint(0, num_classes, (B, M, 1), generator=gen).float()
    return {"x": scores.to(device=device, dtype=dtype), "pd": pd.to(device), "anc": anc.to(device),
            "labels": labels.to(device), "gt": gt.to(device),
            "mask": torch.ones(B, M, 1, device=device)}


def _rotated_assigner(kind):
    key = "rot-" + kind
    if key not in _ASSIGNERS:
        if kind == "fused":
            from ..nn import RotatedTaskAlignedAssigner
        else:
            from ultralytics.utils.tal import RotatedTaskAlignedAssigner
        _ASSIGNERS[key] = RotatedTaskAlignedAssigner(topk=10, num_classes=15, alpha=0.5, beta=6.0)
    return _ASSIGNERS[key]


def _rotated_run(kind):
    def run(i):
        return _rotated_assigner(kind)(i["x"], i["pd"], i["anc"], i["labels"], i["gt"], i["mask"])
    return run


_OKS_SIGMA = [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]


def _pose_inputs(size, dtype, device, gen):
    """YOLO26-pose's assignment at 640 px: 16 images of `size` people (boxes of 16-320 px, so
    every pyramid level's gate is met), COCO's 17 keypoints each inside its box (visibility 0,
    1 or 2), each anchor's predicted keypoints in pixels (near the anchor, as an untrained
    head's), its stride, the COCO sigmas."""
    M, B = max(1, int(size)), 16
    inp = _assign_inputs(M, dtype, device, gen, num_classes=1)
    inp["x"] = inp["x"][:B]
    A = inp["anc"].shape[0]
    xy = torch.rand(B, M, 2, generator=gen) * 600 + 20
    wh = torch.rand(B, M, 2, generator=gen) * 304 + 16
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1).clamp(0, 640)
    kp = gt[:, :, None, :2] + torch.rand(B, M, 17, 2, generator=gen) * (gt[:, :, None, 2:] - gt[:, :, None, :2])
    vis = torch.randint(0, 3, (B, M, 17, 1), generator=gen).float()
    pk = inp["anc"].cpu()[None, :, None] + torch.randn(B, A, 17, 2, generator=gen) * 24
    inp.update(gt=gt.to(device), labels=torch.zeros(B, M, 1, device=device),
               mask=torch.ones(B, M, 1, device=device),
               strides=torch.cat([torch.full(((640 // s) ** 2,), float(s)) for s in (8, 16, 32)]).to(device),
               pd_kpts=pk.to(device), gt_kpts=torch.cat([kp * (vis > 0), vis], -1).to(device),
               sigmas=(torch.tensor(_OKS_SIGMA) / 10.0).to(device))
    return inp


def _pose_bytes(inp, mode):
    return _assign_bytes(inp, mode) + _nbytes(inp["pd_kpts"], inp["gt_kpts"], inp["strides"])


def _pose_assigner(kind, sigmas):
    key = f"pose-{kind}-{sigmas.device}"
    if key not in _ASSIGNERS:
        if kind == "fused":
            from ..nn import PoseTaskAlignedAssigner
        else:
            from ultralytics.utils.tal import PoseTaskAlignedAssigner
        _ASSIGNERS[key] = PoseTaskAlignedAssigner(sigmas, topk=10, num_classes=1, alpha=0.5, beta=6.0)
    return _ASSIGNERS[key]


def _pose_run(kind):
    def run(i):
        return _pose_assigner(kind, i["sigmas"])(i["x"], i["pd"], i["anc"], i["labels"], i["gt"], i["mask"],
                                                 i["strides"], pd_kpts=i["pd_kpts"], gt_kpts=i["gt_kpts"])
    return run


def ops():
    if importlib.util.find_spec("ultralytics") is None:
        return {}
    return {"rotated_assigner": BenchOp(
        name="rotated_assigner", family="assign", unit="rotated boxes per image (8 images, 1024 px)",
        make=_rotated_inputs, fused=_rotated_run("fused"), eager=_rotated_run("ultralytics"),
        bytes_moved=_assign_bytes, differentiable=False, compilable=False,
        # (2,000 boxes: ultralytics' (B, M, A) tensors are 1.4 GB each; on a GPU only)
        sizes={"quick": [64], "cpu": [64, 500], "cuda": [64, 500, 2000]}),
            "pose_assigner": BenchOp(
        name="pose_assigner", family="assign", unit="people per image (16 images, 640 px)",
        make=_pose_inputs, fused=_pose_run("fused"), eager=_pose_run("ultralytics"),
        bytes_moved=_pose_bytes, differentiable=False, compilable=False,
        sizes={"quick": [8], "cpu": [8, 64], "cuda": [8, 64]}),
            "seg_assigner": BenchOp(
        name="seg_assigner", family="assign", unit="objects per image (16 images)",
        make=_seg_inputs, fused=_seg_run("fused"), eager=_seg_run("ultralytics"),
        bytes_moved=_seg_bytes, differentiable=False, compilable=False,
        sizes={"quick": [8], "cpu": [8, 32, 100], "cuda": [8, 32, 100]}),
            "assigner": BenchOp(
        name="assigner", family="assign", unit="boxes per image (16 images; 4 at 4096)",
        make=_assign_inputs, fused=_assign_run("fused"), eager=_assign_run("ultralytics"),
        bytes_moved=_assign_bytes, differentiable=False, compilable=False,
        sizes={"quick": [8, 64], "cpu": [8, 64, 512, 4096], "cuda": [8, 64, 512, 4096]})}
