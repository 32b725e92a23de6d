"""The torchvision patch is a drop-in (issue 14): torchvision's own loss tests, run on the
patched functions, and a differential test against the unpatched ones (values, output
dtypes, errors and their messages), and TorchScript of the functions and of RetinaNet/FCOS.

The first part restates, for the patched functions, what torchvision's test suite asserts of
its losses (pytorch/vision, test/test_ops.py: TestGeneralizedBoxIouLoss,
TestDistanceBoxIouLoss, TestCompleteBoxIouLoss, TestFocalLoss; the same boxes, expected
values, reductions, dtypes, empty inputs, error checks, scripting). One assertion of theirs
holds only up to an ulp for us (README, "Drop-in" notes): with gamma = 0, torchvision's
test_correct_ratio asserts focal <= F.binary_cross_entropy_with_logits elementwise, true for
torchvision because it computes the focal loss from that very BCE; ours is the stable
formula, and torch's BCE rounds relative to |x| (it can be 1e-5 of the loss below ours)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

tv = pytest.importorskip("torchvision")  # a pinned test requirement
import detloss_cuda.integrations.torchvision as dl  # noqa: E402
from conftest import OpSpy, devices  # noqa: E402

BOX_LOSSES = ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]
# torchvision's expected losses for its four boxes (get_boxes in test_ops.py): (b1, b1),
# (b1, b2), (b1 or b2, b3), (b1 or b2, b4), and the batched pair's mean and sum
EXPECTED = {
    "generalized_box_iou_loss": {"pairs": [("b1", "b1", 0.0), ("b1", "b2", 0.75),
                                           ("b2", "b3", 1.0), ("b2", "b4", 1.5)],
                                 "mean": 1.25, "sum": 2.5},
    "distance_box_iou_loss": {"pairs": [("b1", "b1", 0.0), ("b1", "b2", 0.8125),
                                        ("b1", "b3", 1.1923), ("b1", "b4", 1.25)],
                              "mean": 1.225, "sum": 2.45},
    "complete_box_iou_loss": {"pairs": [("b1", "b1", 0.0), ("b1", "b2", 0.8125),
                                        ("b1", "b3", 1.1923), ("b1", "b4", 1.25)],
                              "mean": 1.225, "sum": 2.45},
}


@pytest.fixture
def patched():
    with dl.patched():
        yield tv.ops


def _boxes(dtype, device):
    b = {"b1": [-1, -1, 1, 1], "b2": [0, 0, 1, 1], "b3": [0, 1, 1, 2], "b4": [1, 1, 2, 2]}
    b = {k: torch.tensor(v, dtype=dtype, device=device) for k, v in b.items()}
    b["b1s"] = torch.stack([b["b2"], b["b2"]])
    b["b2s"] = torch.stack([b["b3"], b["b4"]])
    return b


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.half], ids=str)
@pytest.mark.parametrize("name", BOX_LOSSES)
def test_torchvisions_box_loss_cases(patched, name, dtype, device):
    fn, b, want = getattr(patched, name), _boxes(dtype, device), EXPECTED[name]
    with OpSpy() as spy:
        for p, t, value in want["pairs"]:
            # torchvision compares with a float32 tensor, dtype included: fp16 boxes give float32
            torch.testing.assert_close(fn(b[p], b[t]), torch.tensor(value, device=device))
        for red in ("mean", "sum"):
            torch.testing.assert_close(fn(b["b1s"], b["b2s"], reduction=red),
                                       torch.tensor(want[red], device=device))
    assert "detloss::box_loss" in spy.ops  # the fused op ran, not torchvision's code
    with pytest.raises(ValueError, match="Invalid"):
        fn(b["b1s"], b["b2s"], reduction="xyz")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.half], ids=str)
@pytest.mark.parametrize("name", BOX_LOSSES)
def test_torchvisions_empty_box_inputs(patched, name, dtype, device):
    fn = getattr(patched, name)
    b1 = torch.randn([0, 4], dtype=dtype, device=device).requires_grad_()
    b2 = torch.randn([0, 4], dtype=dtype, device=device).requires_grad_()
    loss = fn(b1, b2, reduction="mean")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(0.0, device=device))
    assert b1.grad is not None and b2.grad is not None
    assert fn(b1, b2, reduction="none").numel() == 0


def _diverse_pair(dtype, device, shape=(5, 2)):
    """Logits and targets over the nine (probability range, target kind) combinations
    torchvision's TestFocalLoss draws: probabilities in [0, 0.2], [0.8, 1], [0, 1] against
    all-0, all-1 and random binary targets."""
    xs, ts = [], []
    for lo_hi, kind in itertools.product([(0.0, 0.2), (0.8, 1.0), (0.0, 1.0)],
                                         ["zeros", "ones", "binary"]):
        p = torch.testing.make_tensor(shape, low=lo_hi[0], high=lo_hi[1], dtype=dtype,
                                      device=device)
        xs.append(torch.log(p / (1 - p)))
        if kind == "binary":
            ts.append(torch.randint(0, 2, shape, dtype=dtype, device=device))
        else:
            ts.append(torch.full(shape, float(kind == "ones"), dtype=dtype, device=device))
    return torch.cat(xs), torch.cat(ts)


def _focal_dtypes(device):
    # torchvision skips half on the CPU ("not fully supported"): so do its tests
    return [torch.float32] + ([torch.half] if device == "cuda" else [])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma", [0, 2])
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.58, 1.0])
def test_torchvisions_focal_correct_ratio(patched, alpha, gamma, seed, device):
    for dtype in _focal_dtypes(device):
        torch.manual_seed(seed)
        x, t = _diverse_pair(dtype, device)
        focal = patched.sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="none")
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        # focal <= ce: exact for gamma > 0 here; at gamma = 0 up to torch's BCE rounding:
        # it computes (1 - t)·x + softplus(-x), whose error is relative to |x|, not to the
        # loss (1e-5 of the loss at x = -4, t = 0; ours is within 2e-7 of float64 there)
        slack = 4 * torch.finfo(dtype).eps * (x.abs() + 1) if gamma == 0 else 0
        assert torch.all(focal <= ce + slack)
        ratio = (focal / ce).squeeze()
        p = torch.sigmoid(x)
        p_t = p * t + (1 - p) * (1 - t)
        want = (1.0 - p_t) ** gamma
        if alpha >= 0:
            want = want * (alpha * t + (1 - alpha) * (1 - t))
        tol = 1e-3 if dtype is torch.half else 1e-5
        if gamma == 0:  # the ratio carries torch's BCE rounding (above)
            tol = tol + (slack / ce).max().item()
        torch.testing.assert_close(want, ratio, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_torchvisions_focal_equal_ce_loss(patched, reduction, seed, device):
    for dtype in _focal_dtypes(device):
        torch.manual_seed(seed)
        x, t = _diverse_pair(dtype, device)
        xf, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        focal = patched.sigmoid_focal_loss(xf, t.clone(), gamma=0, alpha=-1, reduction=reduction)
        ce = F.binary_cross_entropy_with_logits(xc, t.clone(), reduction=reduction)
        torch.testing.assert_close(focal, ce)
        focal.backward()
        ce.backward()
        torch.testing.assert_close(xf.grad, xc.grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0, 2])
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.58, 1.0])
def test_torchvisions_focal_jit(patched, alpha, gamma, reduction, seed, device):
    script_fn = torch.jit.script(patched.sigmoid_focal_loss)  # torchvision's, compiled
    for dtype in _focal_dtypes(device):
        torch.manual_seed(seed)
        x, t = _diverse_pair(dtype, device)
        ours = patched.sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction=reduction)
        theirs = script_fn(x, t, gamma=gamma, alpha=alpha, reduction=reduction)
        tol = 1e-3 if dtype is torch.half else 1e-5
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


def test_torchvisions_focal_reduction_mode(patched):
    x, t = _diverse_pair(torch.float32, "cpu")
    with pytest.raises(ValueError, match="Invalid"):
        patched.sigmoid_focal_loss(x, t, 0.25, 2, "xyz")


# ----------------------------------------------------------- patched vs unpatched, exactly
def _outcome(fn, *args, **kwargs):
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - compared by type and message
        return ("raised", type(e), str(e))
    return ("ok", out)


def _same(a, b, dtype):
    assert a[0] == b[0], (a, b)
    if a[0] == "raised":
        assert a[1:] == b[1:], (a, b)
        return
    x, y = a[1], b[1]
    assert x.dtype == y.dtype and x.shape == y.shape, (x, y)
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(x, y, rtol=tol, atol=tol, equal_nan=True)


BOX_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32]


@pytest.mark.parametrize("name", BOX_LOSSES)
@pytest.mark.parametrize("dtype", BOX_DTYPES, ids=str)
def test_box_losses_match_torchvision(name, dtype):
    """Values, output dtypes and errors of the patched box losses equal torchvision's over
    dtypes (integers and halves are float32 there), mixed dtypes, broadcasting, empty inputs,
    reductions (valid and not), eps."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(6, 2, generator=g) * 20
    b1 = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 10 + 1], -1)
    b2 = b1 + torch.randn(6, 4, generator=g)
    cases = [((b1, b2), {}), ((b1, b2), {"reduction": "mean"}), ((b1, b2), {"reduction": "sum"}),
             ((b1[:1], b2), {"reduction": "sum"}), ((b1[:0], b2[:0]), {"reduction": "mean"}),
             ((b1, b2), {"reduction": "avg"}), ((b1, b2), {"eps": 1e-3}),
             ((b1, b2.double()), {}), ((b1[:, :3], b2[:, :3]), {}), ((b1[:4], b2), {})]
    orig = getattr(tv.ops, name)
    for args, kwargs in cases:
        args = tuple(a.to(dtype) if a.dtype == torch.float32 else a for a in args)
        want = _outcome(orig, *args, **kwargs)
        with dl.patched():
            got = _outcome(getattr(tv.ops, name), *args, **kwargs)
        _same(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_focal_loss_matches_torchvision(dtype):
    """Values and errors of the patched focal loss equal torchvision's over alpha (in and
    out of range, -1), gamma (0, fractional, negative), reductions, empty inputs (the mean is
    NaN there), mixed dtypes and shapes."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(7, 3, generator=g) * 3).to(dtype)
    t = (torch.rand(7, 3, generator=g) > 0.7).to(dtype)
    cases = [((x, t), {}), ((x, t), {"reduction": "sum"}), ((x, t), {"reduction": "mean"}),
             ((x, t), {"alpha": -1}), ((x, t), {"alpha": -0.5}), ((x, t), {"alpha": 1.5}),
             ((x, t), {"alpha": 0.0, "gamma": 0}), ((x, t), {"gamma": 0.5}),
             ((x, t), {"gamma": -1.0}), ((x, t), {"reduction": "xyz"}),
             ((x[:0], t[:0]), {"reduction": "mean"}), ((x[:0], t[:0]), {"reduction": "sum"}),
             ((x, t.double()), {}), ((x, t[:, :1]), {})]
    orig = tv.ops.sigmoid_focal_loss
    for args, kwargs in cases:
        want = _outcome(orig, *args, **kwargs)
        with dl.patched():
            got = _outcome(tv.ops.sigmoid_focal_loss, *args, **kwargs)
        _same(got, want, dtype)


def test_patched_functions_script(patched):
    """torch.jit.script of each patched function works (it compiles torchvision's)."""
    b = _boxes(torch.float32, "cpu")
    for name in BOX_LOSSES:
        scripted = torch.jit.script(getattr(patched, name))
        torch.testing.assert_close(scripted(b["b1s"], b["b2s"], "sum"),
                                   getattr(patched, name)(b["b1s"], b["b2s"], reduction="sum"))


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn"])
def test_detection_models_script_under_the_patch(patched, builder):
    """Scripting a RetinaNet / FCOS for export works patched as unpatched, and the scripted
    model computes the same losses."""
    torch.manual_seed(0)
    model = getattr(tv.models.detection, builder)(weights=None, weights_backbone=None,
                                                  num_classes=4, min_size=128, max_size=128)
    model.train()
    scripted = torch.jit.script(model)
    images = [torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([2])}]
    torch.manual_seed(1)
    eager = model(images, targets)
    torch.manual_seed(1)
    losses, _ = scripted(images, targets)
    for k in eager:
        torch.testing.assert_close(losses[k], eager[k], rtol=1e-4, atol=1e-5)
