"""The YOLOv5 integration end to end: yolov5s training steps patched vs unpatched vs float64
(the tolerance: tests/test_integrations.py). yolov5 installs apart (requirements-yolov5.txt)."""
import contextlib
import copy
import importlib
import os

import pytest
import torch

from conftest import OpSpy

from integration_common import Spy, _check_close_as_own_fp32, _grads


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
