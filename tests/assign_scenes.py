"""Scenes for the task-aligned assigner's tests (tests/test_assign.py against ultralytics,
tests/test_cuda_emulated.py the CUDA kernels against the CPU's): images with boxes, padded as
ultralytics pads them, predictions near the boxes, and adversarial layouts."""
import math

import torch


def anchors(size, strides=(8, 16, 32), dtype=torch.float32):
    """ultralytics' make_anchors(feats, stride, 0.5) * stride: cell centres in pixels."""
    pts = []
    for s in strides:
        n = size // s
        y, x = torch.meshgrid(torch.arange(n, dtype=dtype) + 0.5, torch.arange(n, dtype=dtype) + 0.5,
                              indexing="ij")
        pts.append(torch.stack([x, y], -1).view(-1, 2) * s)
    return torch.cat(pts)


def scene(B=3, M=7, size=160, C=5, dtype=torch.float32, seed=0, pad=2, big=False):
    """Images with M boxes each, the last `pad` padded (zeros, as ultralytics pads); predicted
    boxes near the gt boxes (positive CIoU) plus noise; class probabilities."""
    g = torch.Generator().manual_seed(seed)
    anc = anchors(size, dtype=dtype)
    A = anc.shape[0]
    xy = torch.rand(B, M, 2, generator=g, dtype=torch.float64) * size * 0.8 + size * 0.1
    lo, hi = (0.25, 0.6) if big else (0.02, 0.4)
    wh = (torch.rand(B, M, 2, generator=g, dtype=torch.float64) * (hi - lo) + lo) * size
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1).clamp(0, size)
    labels = torch.randint(0, C, (B, M, 1), generator=g).to(dtype)
    mask = torch.ones(B, M, 1)
    if pad:
        gt[:, M - pad:] = 0
        labels[:, M - pad:] = 0
        mask[:, M - pad:] = 0
    # predictions: an anchor-centred box of random size, sometimes good
    pwh = torch.rand(B, A, 2, generator=g, dtype=torch.float64) * size * 0.5 + 4
    pc = anc.double().unsqueeze(0) + torch.randn(B, A, 2, generator=g, dtype=torch.float64) * 4
    pd = torch.cat([pc - pwh / 2, pc + pwh / 2], -1)
    scores = torch.rand(B, A, C, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return (scores.to(dtype), pd.to(dtype), anc, labels, gt.to(dtype), mask.to(dtype))


def adversarial(kind, dtype=torch.float64):
    s, p, a, lab, gt, m = scene(B=2, M=6, dtype=dtype, seed=11, pad=1)
    if kind == "overlapping":
        gt[:, 1] = gt[:, 0] + 3
        gt[:, 2] = gt[:, 0] - 5
    elif kind == "nested":
        c = (gt[:, 0, :2] + gt[:, 0, 2:]) / 2
        for j, r in enumerate((60, 40, 20, 10), start=1):
            gt[:, j] = torch.cat([c - r, c + r], -1)
    elif kind == "duplicates":  # identical boxes: equal overlaps, first box wins
        gt[:, 1] = gt[:, 0]
        gt[:, 2] = gt[:, 0]
        lab[:, 1] = lab[:, 0]
    elif kind == "tiny":  # below the stride: enlarged to stride_val
        gt[:, :3] = torch.tensor([50.0, 50.0, 52.0, 51.0], dtype=dtype)
        gt[:, 3] = torch.tensor([10.0, 100.0, 10.5, 100.2], dtype=dtype)
    elif kind == "cover_all":
        gt[:, 0] = torch.tensor([0.0, 0.0, 160.0, 160.0], dtype=dtype)
    elif kind == "outside":
        gt[:, 0] = torch.tensor([200.0, 200.0, 260.0, 250.0], dtype=dtype)
        gt[:, 1] = torch.tensor([-80.0, -60.0, -10.0, -5.0], dtype=dtype)
    elif kind == "no_boxes_in_one_image":
        m[1] = 0
        gt[1] = 0
    elif kind == "bad_predictions":  # every CIoU <= 0: all metrics 0, ties everywhere
        p[:] = torch.tensor([1000.0, 1000.0, 1001.0, 1001.0], dtype=dtype)
    return (s, p, a, lab, gt, m)


def seg_parts(inputs, nm=8, H=40, size=160, seed=0, kind=None):
    """SegTaskAlignedAssigner's extra arguments for a scene: coefficients ``[B, A, nm]`` (a
    head's ``[B, nm, A]`` permuted, as ultralytics passes them), prototypes, the per-image
    scale and bool masks rasterised from the gt boxes with holes. Dyadic values (quarters and
    eighths): every sum ``coef · proto`` is exact in float32 whatever its order, so the
    binarisation is decided by the same values on every side (csrc/math/assign.h); some sums
    are exactly 0 (not in the mask). ``kind``: "zero_coef" (no predicted mask anywhere),
    "full_coef" (every anchor's mask covers its crop), "empty_gt" (boxes without a mask),
    "fractional" (a scale that puts crop edges off the pixel grid)."""
    s, p, a, lab, gt, m = inputs
    dtype = p.dtype
    B, A, M = s.shape[0], a.shape[0], gt.shape[1]
    g = torch.Generator().manual_seed(seed + 100)
    coef = torch.randint(-4, 5, (B, nm, A), generator=g) / 4
    proto = torch.randint(-4, 5, (B, nm, H, H), generator=g) / 8
    if kind == "zero_coef":
        coef.zero_()
    elif kind == "full_coef":
        coef.fill_(0.25)
        proto = proto.abs() + 0.125
    scale = H / size if kind != "fractional" else H / size * 1.3
    gb = gt.double() * (H / size)
    ys = torch.arange(H, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(H, dtype=torch.float64)[None, :] + 0.5
    inside = ((xs >= gb[..., 0, None, None]) & (xs < gb[..., 2, None, None]) &
              (ys >= gb[..., 1, None, None]) & (ys < gb[..., 3, None, None]))
    gm = inside & (torch.rand(B, M, H, H, generator=g) < 0.8)
    if kind == "empty_gt":
        gm[:, ::2] = False
    return (coef.to(dtype).permute(0, 2, 1), torch.full((B, 1), scale, dtype=dtype),
            proto.to(dtype), gm)


def rotated_scene(B=3, M=7, size=160, C=5, dtype=torch.float32, seed=0, pad=2, kind=None):
    """RotatedTaskAlignedAssigner's inputs: xywhr boxes (radians), padded as ultralytics pads
    them, predicted rotated boxes around the anchors (some near the gt boxes), probabilities.
    ``kind``: "angles" (0, ±π/4, π/2, -π/2 + 1e-3), "near_square", "tiny" (sides below the
    stride), "large" (boxes wider than the image), "axis" (angle 0, edges on the anchor grid:
    anchors exactly on the sides)."""
    g = torch.Generator().manual_seed(seed)
    anc = anchors(size, dtype=dtype)
    A = anc.shape[0]
    xy = torch.rand(B, M, 2, generator=g, dtype=torch.float64) * size * 0.8 + size * 0.1
    wh = torch.rand(B, M, 2, generator=g, dtype=torch.float64) * size * 0.5 + 6
    r = (torch.rand(B, M, 1, generator=g, dtype=torch.float64) - 0.5) * 3.14159
    if kind == "angles":
        vals = torch.tensor([0.0, math.pi / 4, -math.pi / 4, math.pi / 2, -math.pi / 2 + 1e-3],
                            dtype=torch.float64)
        r = vals[torch.arange(B * M) % 5].view(B, M, 1)
    elif kind == "near_square":
        wh[..., 1] = wh[..., 0] * (1 + 1e-4)
    elif kind == "tiny":
        wh = wh / 20
    elif kind == "large":
        wh = wh * 4
    elif kind == "axis":
        r.zero_()
        xy = torch.round(xy / 8) * 8
        wh = torch.round(wh / 8) * 8 + 8
    gt = torch.cat([xy, wh, r], -1)
    labels = torch.randint(0, C, (B, M, 1), generator=g).to(dtype)
    mask = torch.ones(B, M, 1)
    if pad:
        gt[:, M - pad:] = 0
        labels[:, M - pad:] = 0
        mask[:, M - pad:] = 0
    near = torch.randint(0, max(M, 1), (B, A), generator=g)
    pick = torch.gather(gt, 1, near.unsqueeze(-1).expand(B, A, 5)) if M else torch.zeros(B, A, 5, dtype=torch.float64)
    pc = anc.double().unsqueeze(0) + torch.randn(B, A, 2, generator=g, dtype=torch.float64) * 4
    pwh = torch.rand(B, A, 2, generator=g, dtype=torch.float64) * size * 0.4 + 4
    pr = (torch.rand(B, A, 1, generator=g, dtype=torch.float64) - 0.5) * 3.14159
    pd = torch.cat([pc, pwh, pr], -1)
    good = torch.rand(B, A, 1, generator=g) < 0.3  # some predictions close to a gt box
    jitter = torch.randn(B, A, 5, generator=g, dtype=torch.float64) * torch.tensor([2, 2, 3, 3, 0.1])
    pd = torch.where(good, pick + jitter, pd)
    scores = torch.rand(B, A, C, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return (scores.to(dtype), pd.to(dtype), anc, labels, gt.to(dtype), mask.to(dtype))


def anchor_strides(size, strides=(8, 16, 32), dtype=torch.float32):
    """Each anchor's stride, in anchors()' order (ultralytics' stride_tensor.view(-1))."""
    return torch.cat([torch.full(((size // s) ** 2,), float(s), dtype=dtype) for s in strides])


def pose_parts(inputs, K=17, size=160, seed=0, kind=None):
    """PoseTaskAlignedAssigner's extra inputs for a scene(): anchor strides, each box's K
    keypoints inside it (visibility 0, 1 or 2; box 0 of image 0 has none visible), each
    anchor's predicted keypoints near those of the box whose centre is nearest (pixels), and
    sigmas. kind: 'fallback' adds a wide, thin box no level fits (its candidates ungated),
    'exact' makes some predictions equal to the truth (OKS 1), 'invisible' hides every
    keypoint (every overlap the CIoU)."""
    s, p, a, lab, gt, m = inputs
    dtype = gt.dtype
    g = torch.Generator().manual_seed(seed + 100)
    B, M = gt.shape[:2]
    A = a.shape[0]
    if kind == "fallback":
        # side sqrt(960 * 12) = 107 > 12 * 8: not the finest level; its centre row y = 32
        # leaves no stride-16 or -32 anchor strictly inside (16-px region after stride_val)
        gt = gt.clone()
        gt[:, 0] = torch.tensor([-400.0, 26.0, 560.0, 38.0], dtype=dtype)
    u = torch.rand(B, M, K, 2, generator=g, dtype=torch.float64)
    xy = gt[..., None, :2].double() + u * (gt[..., None, 2:] - gt[..., None, :2]).double()
    vis = torch.randint(0, 3, (B, M, K, 1), generator=g).double()
    vis[:1, :1] = 0
    if kind == "invisible":
        vis[:] = 0
    gt_kpts = torch.cat([xy, vis], -1)
    # each anchor's keypoints: those of the box of nearest centre, moved by up to ~15% of its size
    c = (gt[..., :2] + gt[..., 2:]).double() / 2  # [B, M, 2]
    d = (a.double()[None, :, None] - c[:, None]).pow(2).sum(-1)  # [B, A, M]
    noise = torch.randn(B, A, K, 2, generator=g, dtype=torch.float64)
    if M == 0:
        base, scale = a.double()[None, :, None].expand(B, A, K, 2), torch.full((B, A, 1, 1), 8.0)
    else:
        near = d.argmin(-1)  # [B, A]
        base = torch.gather(xy, 1, near[..., None, None].expand(B, A, K, 2))
        wh = (gt[..., 2:] - gt[..., :2]).double().abs() + 2
        scale = torch.gather(wh, 1, near[..., None].expand(B, A, 2))[:, :, None]
    pd = base + noise * scale * 0.15
    if kind == "exact":
        pd[:, ::7] = base[:, ::7]
    strides = anchor_strides(size, dtype=torch.float32)
    sig = torch.tensor([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                        .89, .89])[:K] / 10.0 if K <= 17 else torch.full((K,), 1.0 / K)
    return (s, p, a, lab, gt, m), strides, pd.float(), gt_kpts.to(dtype), sig
