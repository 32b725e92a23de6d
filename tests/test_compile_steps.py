"""Compiled loss steps: the loss of each patched library's training step under torch.compile
gives the eager patched step's numbers (every loss item and every parameter's gradient, to
float32 rounding), compiles nothing again for a second step of the same shapes, and breaks
its graph only where the library's own code does: no break in detloss_cuda (its ops trace
as single graph nodes, their fake kernels giving the real layouts: tests/test_layouts.py).

What is compiled is the library's loss: ultralytics' criterion (YOLOv8n, YOLO11n, YOLO26n's
end-to-end loss, YOLO11n-seg), torchvision's RetinaNet/FCOS ``compute_loss``, transformers'
DETR / RT-DETR ``loss_function`` (their matchers call SciPy: graph breaks there, allowed),
YOLOv5's ``ComputeLoss``. None of the libraries' unpatched losses compiles without graph
breaks (data-dependent shapes, host reads: each test prints its counts), so none is asked
for ``fullgraph=True``; the fused ops are (tests/test_layouts.py, test_cls.py, test_dfl.py).

Backend: DETLOSS_COMPILE_BACKEND (default ``aot_eager``: Dynamo and AOTAutograd with the fake
kernels, the same graphs and breaks, minutes less than Inductor's code generation on 2
cores); YOLOv8n's fused step also runs with ``inductor`` always, whose generated code asserts
every custom op's output strides against its fake kernel's."""
import copy
import os

import pytest
import torch

from integration_common import _global_rel, _grads, _require
from test_integrations import _seg_masks, _tv_model, _yolo_model
from test_integrations_detr import _detr_batch, _detr_models
from test_integrations_yolov5 import _yolov5_model

BACKEND = os.environ.get("DETLOSS_COMPILE_BACKEND", "aot_eager")


class Counting:
    """A torch.compile backend that counts the graphs it compiles."""

    def __init__(self, backend):
        self.backend, self.graphs = backend, 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.backend)(gm, example_inputs)


# Breaks in detloss_cuda's code that the library makes itself at the same place: transformers'
# generalized_box_iou checks its boxes' corners on the host (a data-dependent branch, so a
# break), and its patched form makes that very check, with the library's message; a routed
# Hungarian matcher makes the library's corner checks (one host read where the library makes
# two) and calls SciPy on the host as the library's does.
LIBRARY_BREAKS = {("transformers.py", "_check_corners"), ("transformers.py", "_matcher_inputs"),
                  ("match.py", "solve")}


def breaks(fn, *args, **kwargs):
    """(graph breaks, those whose innermost user frame is in detloss_cuda, other than
    LIBRARY_BREAKS, or whose reason names one of its ops) of fn(*args), by
    torch._dynamo.explain (which runs it)."""
    torch._dynamo.reset()
    ex = torch._dynamo.explain(fn)(*args, **kwargs)
    ours = []
    for r in ex.break_reasons:
        frame = r.user_stack[-1] if r.user_stack else None
        # (after a break Dynamo resumes in a function named torch_dynamo_resume_in_<name>_at_..)
        if frame is not None and any(os.path.basename(frame.filename) == f and name in frame.name
                                     for f, name in LIBRARY_BREAKS):
            continue
        if (frame is not None and f"{os.sep}detloss_cuda{os.sep}" in frame.filename) or \
                "detloss" in str(r.reason):
            ours.append(f"{frame.filename}:{frame.lineno}: {str(r.reason)[:300]}" if frame
                        else str(r.reason)[:300])
    return ex.graph_break_count, ours


def close(eager, compiled, what):
    """Loss items and gradients: compiled = eager to float32 rounding. The losses within a
    few float32 ulps of their size; the gradients of all parameters together within 1e-4
    (relative): the backward through the network is linear in the losses' gradients, whose
    elements differ by float32 rounding where Inductor fuses and reorders the library's
    float32 arithmetic (amplified to ~1e-6 here, tests/test_integrations.py measures the same
    for patched vs unpatched), far below what a wrong term or path gives (>= 1e-3).
    aot_eager runs the same kernels in the same order: equal."""
    assert eager["losses"].keys() == compiled["losses"].keys()
    for k, v in eager["losses"].items():
        torch.testing.assert_close(compiled["losses"][k], v, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{what}: {k}\n{m}")
    assert eager["grads"].keys() == compiled["grads"].keys() and len(eager["grads"]) > 10
    rel = _global_rel(compiled["grads"], eager["grads"])
    assert rel < 1e-4, f"{what}: gradients {rel:.2e} apart (relative, all parameters)"


def run_compiled(step, backend, report):
    """step(compile_fn) runs a training step with its loss compiled by compile_fn (or eager
    with None) and returns {name: tensor}; checks compiled = eager, and that a second
    compiled step compiles nothing."""
    eager = step(None)
    counting = Counting(backend)
    torch._dynamo.reset()
    compiled_fn = {}

    def compile_fn(fn):
        if fn not in compiled_fn:
            compiled_fn[fn] = torch.compile(fn, backend=counting)
        return compiled_fn[fn]

    first = step(compile_fn)
    graphs = counting.graphs
    second = step(compile_fn)
    report(f"{graphs} graphs compiled ({backend})")
    assert graphs > 0
    assert counting.graphs == graphs, f"the second step compiled {counting.graphs - graphs} more graphs"
    close(eager, first, "first compiled step")
    close(eager, second, "second compiled step")


# ------------------------------------------------------------------------------ ultralytics
def _yolo_batch(size):
    batch = {"batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]),
             "cls": torch.tensor([[1.0], [5.0], [7.0], [2.0], [7.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.6, 0.2, 0.2],
                                     [0.6, 0.4, 0.5, 0.3], [0.2, 0.2, 0.1, 0.15],
                                     [0.75, 0.7, 0.3, 0.35]])}
    return batch


@pytest.mark.parametrize("cfg,backend", [("yolov8n.yaml", BACKEND), ("yolo11n.yaml", BACKEND),
                                         ("yolo26n.yaml", BACKEND), ("yolo11n-seg.yaml", BACKEND),
                                         ("yolo26n-seg.yaml", BACKEND), ("yolo11n-obb.yaml", BACKEND),
                                         ("yolo26n-obb.yaml", BACKEND), ("yolo11n-pose.yaml", BACKEND),
                                         ("yolo26n-pose.yaml", BACKEND),
                                         ("yolov8n.yaml", "inductor")])
def test_ultralytics_loss_compiles(cfg, backend, capsys):
    _require("ultralytics")
    import detloss_cuda.integrations.ultralytics as dl

    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    batch = _yolo_batch(128)
    if "-seg" in cfg:
        batch["masks"] = _seg_masks(batch, 2, 32)
        batch["sem_masks"] = (batch["masks"] > 0).long() * 3  # (YOLO26-seg's semantic branch)
    if "-pose" in cfg:  # COCO keypoints, one class
        from test_integrations import _pose_batch
        batch = _pose_batch()
        keep = batch["batch_idx"] < 2  # (its third image's people: this step has two images)
        batch = {k: v[keep] for k, v in batch.items()}
    if "-obb" in cfg:  # rotated boxes: an angle each
        batch["bboxes"] = torch.cat([batch["bboxes"], torch.tensor([[0.0], [0.5], [-0.8], [1.5], [0.1]])], 1)
    model = _yolo_model(cfg)
    with dl.patched():
        criterion = model.init_criterion()  # built under the patch, as a patched trainer's is

        def step(compile_fn):
            model.zero_grad(set_to_none=True)
            crit = criterion if compile_fn is None else compile_fn(criterion)
            b = {k: v.clone() for k, v in batch.items()}  # (ultralytics edits some in place)
            loss, items = crit(model(x), b)
            loss.sum().backward()
            return {"losses": {k: v.detach() for k, v in items.items()}, "grads": _grads(model)}

        n, ours = breaks(criterion, model(x), {k: v.clone() for k, v in batch.items()})
        assert not ours, "graph breaks in detloss_cuda:\n" + "\n".join(ours)
        run_compiled(step, backend, lambda m: None)
    n0, _ = breaks(model.init_criterion(), model(x), {k: v.clone() for k, v in batch.items()})
    with capsys.disabled():
        print(f"\n  {cfg} ({backend}): loss {n0} graph breaks unpatched, {n} patched (none in "
              "detloss_cuda)", end="")
    assert 0 < n <= n0  # (the library's own step does not compile whole: no fullgraph asked)


# ------------------------------------------------------------------------------ torchvision
def _tv_inputs():
    g = torch.Generator().manual_seed(3)
    imgs = [torch.rand(3, 160, 160, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 80, 100], [50, 50, 150, 120]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[30.0, 10, 90, 70]]), "labels": torch.tensor([2])}]
    return imgs, targets


@pytest.mark.parametrize("kind,loss_type", [("retinanet", None), ("retinanet", "giou"), ("fcos", None)])
def test_torchvision_compute_loss_compiles(kind, loss_type, capsys):
    _require("torchvision")
    import detloss_cuda.integrations.torchvision as dl

    model = _tv_model(kind, loss_type)
    imgs, targets = _tv_inputs()
    own = model.compute_loss

    def step(compile_fn):
        model.zero_grad(set_to_none=True)
        model.compute_loss = own if compile_fn is None else compile_fn(own)
        try:
            losses = model(imgs, targets)
        finally:
            model.compute_loss = own
        sum(losses.values()).backward()
        return {"losses": {k: v.detach() for k, v in losses.items()}, "grads": _grads(model)}

    def explain_step():
        n = {}

        def capture(*args):
            n["breaks"] = breaks(own, *args)
            return own(*args)
        model.compute_loss = capture
        try:
            model(imgs, targets)
        finally:
            model.compute_loss = own
        return n["breaks"]

    n0, _ = explain_step()
    with dl.patched():
        n, ours = explain_step()
        assert not ours, "graph breaks in detloss_cuda:\n" + "\n".join(ours)
        run_compiled(step, BACKEND, lambda m: None)
    with capsys.disabled():
        print(f"\n  {kind} {loss_type or ''}: compute_loss {n0} graph breaks unpatched, {n} "
              "patched (none in detloss_cuda)", end="")
    assert 0 < n <= n0


# ---------------------------------------------------------------------- transformers (DETR)
@pytest.mark.parametrize("arch", ["detr", "rt_detr"])
def test_detr_loss_compiles(arch, capsys):
    import detloss_cuda.integrations.transformers as dl

    torch.manual_seed(0)
    model = _detr_models()[arch]()
    model.train()
    x, labels = _detr_batch()
    own = model.loss_function

    def step(compile_fn):
        model.zero_grad(set_to_none=True)
        model.loss_function = own if compile_fn is None else compile_fn(own)
        try:
            out = model(pixel_values=x, labels=copy.deepcopy(labels))
        finally:
            model.loss_function = own
        out.loss.backward()
        return {"losses": {"loss": out.loss.detach(),
                           **{k: v.detach() for k, v in out.loss_dict.items() if k.startswith("loss")}},
                "grads": _grads(model)}

    def explain_step():
        n = {}

        def capture(*args, **kwargs):
            n["breaks"] = breaks(own, *args, **kwargs)
            return own(*args, **kwargs)
        model.loss_function = capture
        try:
            model(pixel_values=x, labels=copy.deepcopy(labels))
        finally:
            model.loss_function = own
        return n["breaks"]

    n0, _ = explain_step()
    with dl.patched():
        n, ours = explain_step()
        assert not ours, "graph breaks in detloss_cuda:\n" + "\n".join(ours)
        run_compiled(step, BACKEND, lambda m: None)
    with capsys.disabled():
        print(f"\n  {arch}: loss {n0} graph breaks unpatched, {n} patched (none in "
              "detloss_cuda; the matcher's SciPy call among them)", end="")
    assert 0 < n <= n0


# ------------------------------------------------------------------------------------ YOLOv5
def test_yolov5_compute_loss_compiles(capsys):
    from test_integrations_yolov5 import _require_yolov5

    _require_yolov5()
    import detloss_cuda.integrations.yolov5 as dl
    from yolov5.utils.loss import ComputeLoss

    model = _yolov5_model({})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 128, 128, generator=g)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [0, 5, 0.3, 0.6, 0.2, 0.2],
                            [1, 7, 0.6, 0.4, 0.5, 0.3], [1, 2, 0.2, 0.2, 0.1, 0.15]])
    with dl.patched():
        compute_loss = ComputeLoss(model)

        def step(compile_fn):
            model.zero_grad(set_to_none=True)
            fn = compute_loss if compile_fn is None else compile_fn(compute_loss)
            loss, items = fn(model(x), targets.clone())
            loss.sum().backward()
            return {"losses": {"box, obj, cls": items.detach()}, "grads": _grads(model)}

        compute_loss(model(x), targets.clone())  # (the criteria swap on the first call)
        n, ours = breaks(compute_loss, model(x), targets.clone())
        assert not ours, "graph breaks in detloss_cuda:\n" + "\n".join(ours)
        run_compiled(step, BACKEND, lambda m: None)
    n0, _ = breaks(ComputeLoss(model), model(x), targets.clone())
    with capsys.disabled():
        print(f"\n  yolov5s: ComputeLoss {n0} graph breaks unpatched, {n} patched (none in "
              "detloss_cuda)", end="")
    assert 0 < n <= n0
