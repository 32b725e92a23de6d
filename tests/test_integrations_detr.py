"""The transformers integration end to end: DETR, Deformable DETR and RT-DETR training steps
patched vs unpatched vs float64 (the tolerance: tests/test_integrations.py)."""
import contextlib
import copy

import pytest
import torch

from integration_common import F32_EPS, Spy, _check_close_as_own_fp32, _grads, _require


# ------------------------------------------------------------------ transformers (DETR family)
def _detr_models():
    """Tiny randomly initialised DETR, Deformable DETR, RT-DETR, D-FINE, DEIMv2, LW-DETR and
    Grounding DINO (no weights, no network; dropout and the random denoising queries off, so
    that steps are repeatable)."""
    T = _require("transformers")
    T.logging.set_verbosity_error()

    def resnet(cls=T.ResNetConfig):
        return cls(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                   out_features=["stage2", "stage3", "stage4"])

    small = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                 num_queries=12, num_labels=5, dropout=0.0, attention_dropout=0.0,
                 activation_dropout=0.0)
    rt_like = dict(backbone_config=resnet(T.RTDetrResNetConfig), use_pretrained_backbone=False,
                   encoder_hidden_dim=16, encoder_in_channels=[16, 16, 16],
                   decoder_in_channels=[16, 16, 16], decoder_layers=2, num_denoising=0,
                   decoder_n_points=2, **small)
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
        "d_fine": lambda: T.DFineForObjectDetection(T.DFineConfig(lqe_hidden_dim=8, **rt_like)),
        "deimv2": lambda: T.Deimv2ForObjectDetection(T.Deimv2Config(**rt_like)),
        "lw_detr": lambda: T.LwDetrForObjectDetection(T.LwDetrConfig(
            backbone_config=T.LwDetrViTConfig(
                hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                patch_size=16, window_block_indices=[0], out_indices=[1, 2]),
            projector_scale_factors=[1.0], d_model=32, decoder_layers=2,
            decoder_self_attention_heads=2, decoder_cross_attention_heads=2, decoder_ffn_dim=32,
            num_queries=12, num_labels=5, group_detr=3, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0)),
        "grounding_dino": lambda: T.GroundingDinoForObjectDetection(T.GroundingDinoConfig(
            use_timm_backbone=False, backbone_config=resnet(), use_pretrained_backbone=False,
            text_config=T.BertConfig(vocab_size=1100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0),
            decoder_layers=2, auxiliary_loss=True, two_stage=True, num_feature_levels=3,
            encoder_n_points=2, decoder_n_points=2, max_text_len=16,
            **{k: v for k, v in small.items() if k != "num_labels"})),
    }


def _detr_batch():
    """Two 64 x 64 images and their targets: two boxes in the first, one in the second."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 64, generator=g)
    labels = [{"class_labels": torch.tensor([1, 3]),
               "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.3, 0.2, 0.2]])},
              {"class_labels": torch.tensor([4]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.3]])}]
    return x, labels


def _text(arch):
    """Grounding DINO's prompt: token ids (101/102 the ends, 1012 the '.' between classes;
    the first image three classes, the second two and padding) and their attention mask."""
    if arch != "grounding_dino":
        return {}
    ids = torch.tensor([[101, 11, 12, 1012, 13, 1012, 14, 15, 1012, 102],
                        [101, 21, 1012, 22, 23, 1012, 102, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _translate_gt_in_float32(monkeypatch):
    """D-FINE's translate_gt forms its interpolation weights in float32 (indices.float()) and
    cannot take float64 distances: a float64 run's targets go through it in float32 (targets,
    no gradient; a 1e-7 relative change of the reference)."""
    from transformers.loss import loss_d_fine

    translate = loss_d_fine.translate_gt

    def translate_in_float32(gt, max_num_bins, reg_scale, up):
        out = translate(gt.float(), max_num_bins, reg_scale, up.float())
        return tuple(o.double() if o.is_floating_point() else o for o in out)

    monkeypatch.setattr(loss_d_fine, "translate_gt", translate_in_float32)


def _detr_step(model, x, labels, patched, **inputs):
    import detloss_cuda.integrations.transformers as dl

    model.zero_grad(set_to_none=True)
    ctx = dl.patched() if patched else contextlib.nullcontext()
    with ctx:
        out = model(pixel_values=x, labels=labels, **inputs)
        out.loss.backward()
    items = {k: v.detach().double() for k, v in out.loss_dict.items() if k.startswith("loss")}
    items["loss"] = out.loss.detach().double()
    return items, _grads(model)


@pytest.mark.parametrize("arch", ["detr", "deformable_detr", "rt_detr", "d_fine", "deimv2",
                                  "lw_detr"])
def test_detr_family_steps_match(arch, monkeypatch):
    """A training step of DETR (the matcher's fused cost; GIoU of the matched pairs),
    Deformable DETR (+ focal loss), RT-DETR and D-FINE (+ VFL, FGL, DDF's distillation KL),
    DEIMv2 (+ MAL) and LW-DETR (query groups matched apart):
    every loss of the dict (auxiliary decoder layers' and the encoder's included) and every
    parameter's gradient as close to float64 as transformers' own float32 step, and the
    fused functions ran."""
    import detloss_cuda.integrations.transformers as dl

    torch.manual_seed(0)
    model = _detr_models()[arch]()
    model.train()
    if arch in ("d_fine", "deimv2"):
        # the edge-distribution heads start at zero: every layer's corners equal, so DDF (each
        # layer's distributions against the last's) would be 0; a trained model's are not
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "bbox_embed" in n and n.endswith("layers.2.weight"):
                    p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(n)))
    x, labels = _detr_batch()
    if arch == "lw_detr":
        # LW-DETR's encoder proposals sit on the anchors' grid, which these boxes' edges share:
        # the L1 term at its kink |0| makes float32's and float64's gradients of those heads
        # differ by 20-40%, which would leave the comparison meaningless; off the grid
        for t in labels:
            t["boxes"] = t["boxes"] + 0.0123
    m64 = copy.deepcopy(model).double()
    was = torch.get_default_dtype()
    if arch in ("d_fine", "deimv2"):
        _translate_gt_in_float32(monkeypatch)
    torch.set_default_dtype(torch.float64)  # the losses build float32 buffers (class weights)
    try:
        l64, g64 = _detr_step(m64, x.double(), [{k: (v.double() if v.is_floating_point() else v)
                                                  for k, v in t.items()} for t in labels], False)
    finally:
        torch.set_default_dtype(was)
        monkeypatch.undo()
    l32, g32 = _detr_step(model, x, labels, False)
    spy, spy_match = Spy(dl.DF), Spy(dl.DM)
    monkeypatch.setattr(dl, "DF", spy)
    monkeypatch.setattr(dl, "DM", spy_match)
    lp, gp = _detr_step(model, x, labels, True)
    layers = {"detr": 1, "deformable_detr": 2, "rt_detr": 2, "d_fine": 2, "deimv2": 2,
              "lw_detr": 2}[arch]  # each decoder layer's losses
    # the matchers: the fused per-image cost, no (B·Q) x ΣT GIoU matrix of the library's
    assert spy_match.calls["detr_match_cost"] >= layers and spy.calls["box_iou_matrix"] == 0
    assert spy.calls["generalized_box_iou_loss"] == layers + (arch not in ("detr", "deformable_detr"))  # + encoder
    if arch == "deformable_detr":
        assert spy.calls["sigmoid_focal_loss"] == layers
    if arch in ("rt_detr", "d_fine", "deimv2"):  # VFL, or DEIMv2's MAL
        assert spy.calls["binary_cross_entropy_with_logits"] == layers + 1
    if arch in ("d_fine", "deimv2"):  # FGL and DDF: the auxiliary layers' (against the last);
        # transformers gives the last layer's outputs no corners: no FGL there
        assert spy.calls["distribution_focal_loss"] == layers - 1
        assert spy.calls["distribution_kl_loss"] == layers - 1
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


@pytest.mark.parametrize("arch", ["grounding_dino"])
def test_detr_loss_steps_match(arch, monkeypatch):
    """Grounding DINO's loss step (the matcher's token-map class cost, the focal loss on the
    text tokens, GIoU of the matched pairs; two decoder layers and the encoder's proposals) on
    the outputs of one forward: the loss dict and the gradient of every output the loss
    takes, as close to float64 as transformers' own float32 step. Not the whole training
    step: this model's forward is not reproducible here (the same weights and inputs give
    logits that differ in the fifth digit from call to call, in its text-image encoder), which
    a whole-step comparison would measure instead of the loss."""
    import detloss_cuda.integrations.transformers as dl

    torch.manual_seed(0)
    model = _detr_models()[arch]()
    model.train()
    x, labels = _detr_batch()
    if arch == "grounding_dino":  # classes of the prompt: three in the first image, two
        labels[0]["class_labels"], labels[1]["class_labels"] = torch.tensor([1, 2]), torch.tensor([1])
    for t in labels:  # (off the anchors' grid: no L1 term at its kink |0|)
        t["boxes"] = t["boxes"] + 0.0123
    got = {}

    def capture(*args, **kwargs):
        got["args"], got["kwargs"] = args, kwargs
        return torch.zeros(()), {}, None

    monkeypatch.setattr(model, "loss_function", capture)
    model(pixel_values=x, labels=labels, **_text(arch))
    monkeypatch.undo()
    outputs = {**dict(enumerate(got["args"])), **got["kwargs"]}
    leaves = [k for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    assert len(leaves) >= 5  # logits, boxes, the layers' and the encoder's logits

    def step(dtype, patched):
        inputs = {k: (v.detach().to(dtype).requires_grad_(k in leaves)
                      if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                  for k, v in outputs.items()}
        inputs[1] = [{k: (v.to(dtype) if v.is_floating_point() else v) for k, v in t.items()}
                     for t in labels]
        with dl.patched() if patched else contextlib.nullcontext():
            loss, loss_dict, _ = model.loss_function(
                *[inputs[i] for i in range(len(got["args"]))],
                **{k: inputs[k] for k in got["kwargs"]})
            loss.backward()
        items = {k: v.detach().double() for k, v in loss_dict.items() if k.startswith("loss")}
        items["loss"] = loss.detach().double()
        return items, {k: inputs[k].grad.double() for k in leaves}

    was = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # buffers (label maps' norms, weights) by default dtype
    try:
        l64, g64 = step(torch.float64, False)
    finally:
        torch.set_default_dtype(was)
    l32, g32 = step(torch.float32, False)
    spy, spy_match = Spy(dl.DF), Spy(dl.DM)
    monkeypatch.setattr(dl, "DF", spy)
    monkeypatch.setattr(dl, "DM", spy_match)
    lp, gp = step(torch.float32, True)
    assert spy_match.calls["detr_match_cost"] == 3 and spy.calls["box_iou_matrix"] == 0
    assert spy.calls["generalized_box_iou_loss"] == 3 and spy.calls["sigmoid_focal_loss"] == 3
    assert l64.keys() == l32.keys() == lp.keys() and len(l64) >= 10
    for k in l64:
        own, ours = (l32[k] - l64[k]).abs().item(), (lp[k] - l64[k]).abs().item()
        assert ours <= 2 * own + 8 * F32_EPS * l64[k].abs().item(), (k, ours, own)
    for k in g64:
        ref = g64[k].norm()
        own, ours = (g32[k] - g64[k]).norm() / ref, (gp[k] - g64[k]).norm() / ref
        assert ours <= 2 * own + 1e-6 and (gp[k] - g32[k]).norm() / ref < 1e-5, (k, ours, own)
        assert own < 1e-3, (k, own)  # the float32 loss step itself is sane


def test_transformers_unpatch_restores_the_originals():
    _require("transformers")
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss import loss_for_object_detection as od, loss_rt_detr as rt

    from transformers.loss import loss_d_fine as df, loss_deformable_detr as dd, loss_deimv2 as deim
    from transformers.loss import loss_grounding_dino as gd, loss_lw_detr as lw, loss_rf_detr as rf

    def snapshot():
        return [od.sigmoid_focal_loss, od.generalized_box_iou, od.ImageLoss.__dict__["loss_boxes"],
                rt.RTDetrLoss.__dict__["loss_labels_vfl"], rt.sigmoid_focal_loss,
                od.HungarianMatcher.__dict__["forward"],
                dd.DeformableDetrHungarianMatcher.__dict__["forward"],
                rt.RTDetrHungarianMatcher.__dict__["forward"],
                lw.LwDetrHungarianMatcher.__dict__["forward"], rf.RfDetrHungarianMatcher.__dict__["forward"],
                gd.GroundingDinoHungarianMatcher.__dict__["forward"],
                deim.Deimv2Loss.__dict__["loss_labels_mal"], df.DFineLoss.__dict__["loss_local"]]

    before = snapshot()
    with dl.patched():
        assert dl.is_patched() and all(a is not b for a, b in zip(before, snapshot()))
    assert not dl.is_patched()
    assert all(a is b for a, b in zip(before, snapshot()))


def test_grounding_dino_focal_loss_reaches_the_fused_op():
    """Grounding DINO's loss_labels passes its focal loss the 1-D masked_select of the logits
    and one-hot targets (text tokens): those reach the fused op, with the library's value and
    gradient; a 0-dim call goes to the library."""
    _require("transformers")
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss import loss_grounding_dino as gd

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 9, 16, generator=g) * 3
    text_mask = torch.rand(2, 9, 16, generator=g) > 0.3
    onehot = (torch.rand(2, 9, 16, generator=g) > 0.9).float()
    x = torch.masked_select(logits, text_mask)
    t = torch.masked_select(onehot, text_mask)
    assert x.dim() == 1
    xr = x.clone().requires_grad_()
    want = gd.sigmoid_focal_loss(xr, t, 3.0, alpha=0.25, gamma=2)
    (gw,) = torch.autograd.grad(want, xr)
    spy = Spy(dl.DF)
    with pytest.MonkeyPatch.context() as mp, dl.patched():
        mp.setattr(dl, "DF", spy)
        xp = x.clone().requires_grad_()
        got = gd.sigmoid_focal_loss(xp, t, 3.0, alpha=0.25, gamma=2)
        (gg,) = torch.autograd.grad(got, xp)
        assert spy.calls["sigmoid_focal_loss"] == 1
        scalar = gd.sigmoid_focal_loss(x[0], t[0], 3.0)
        assert spy.calls["sigmoid_focal_loss"] == 1  # 0-dim: the library's
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(gg, gw, rtol=2e-5, atol=2e-7)
    torch.testing.assert_close(scalar, gd.sigmoid_focal_loss(x[0], t[0], 3.0))


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


# ------------------------------------------------------------------ ultralytics' RT-DETR
def _rtdetr_model(num_denoising):
    """RT-DETR-l from ultralytics' yaml (no weights), 5 classes. BatchNorm keeps its initial
    statistics (eval): batch statistics of two 64 px images amplify float32 rounding ~100x
    (the float32 step's gradient is then 2% from float64's, which would leave the comparison
    meaningless); the loss path is the training one."""
    _require("ultralytics")
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import RTDETRDetectionModel

    torch.manual_seed(0)
    model = RTDETRDetectionModel("rtdetr-l.yaml", nc=5, verbose=False)
    model.args, model.nc = get_cfg(), 5
    model.train()
    model.model[-1].num_denoising = num_denoising
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


def _rtdetr_batch(x):
    return {"img": x, "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
            "cls": torch.tensor([[1.0], [3.0], [4.0]]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.4], [0.3, 0.3, 0.2, 0.2],
                                    [0.6, 0.4, 0.5, 0.3]])}


def _rtdetr_step(model, batch, patched):
    """Every loss of RTDETRDetectionLoss' dict (ultralytics returns three) and the gradients;
    the denoising groups drawn from the same seed."""
    import detloss_cuda.integrations.ultralytics as dl

    model.zero_grad(set_to_none=True)
    crit, got = model.init_criterion(), {}
    forward = crit.forward

    def capture(*a, **k):
        out = forward(*a, **k)
        got.update(out)
        return out

    crit.forward = capture
    model.criterion = crit
    torch.manual_seed(1)
    with dl.patched() if patched else contextlib.nullcontext():
        loss, _ = model.loss(batch)
        loss.backward()
    items = {k: v.detach().double() for k, v in got.items()}
    items["loss"] = loss.detach().double()
    return items, _grads(model)


@pytest.mark.parametrize("num_denoising", [0, 100])
def test_ultralytics_rtdetr_step_matches(num_denoising, monkeypatch):
    """RT-DETR-l (ultralytics' yaml; VFL, the encoder's and six decoder layers' matchings, the
    denoising groups): every loss of the dict and every gradient as close to float64 as
    ultralytics' own float32 step; the fused matching cost ran for each matching, the class
    loss on class indices (ultralytics' VarifocalLoss never ran), GIoU on the box kernels."""
    import detloss_cuda.integrations.ultralytics as dl
    import ultralytics.models.utils.ops as UO
    from ultralytics.utils import loss as L

    model = _rtdetr_model(num_denoising)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    m64 = copy.deepcopy(model).double()
    cdn = UO.get_cdn_group

    def cdn_float32(batch, nc, nq, class_embed, *a, **k):
        # the same noise as the float32 runs (torch.rand draws other numbers in float64)
        torch.set_default_dtype(torch.float32)
        try:
            out = cdn(batch, nc, nq, class_embed.float(), *a, **k)
        finally:
            torch.set_default_dtype(torch.float64)
        return tuple(o.double() if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                     for o in out)

    was, b64 = torch.get_default_dtype(), _rtdetr_batch(x.double())  # float32 boxes, as loaded
    monkeypatch.setattr(UO, "get_cdn_group", cdn_float32)
    torch.set_default_dtype(torch.float64)  # ultralytics' buffers take the default dtype
    try:
        l64, g64 = _rtdetr_step(m64, b64, False)
    finally:
        torch.set_default_dtype(was)
        monkeypatch.setattr(UO, "get_cdn_group", cdn)
    l32, g32 = _rtdetr_step(model, _rtdetr_batch(x), False)
    spy, spy_match, vfl = Spy(dl.DF), Spy(dl.DM), []
    monkeypatch.setattr(dl, "DF", spy)
    monkeypatch.setattr(dl, "DM", spy_match)
    with dl.patched():  # (patched inside the step again: a no-op; the spy wraps ours)
        ours_vfl = L.VarifocalLoss.forward
        monkeypatch.setattr(L.VarifocalLoss, "forward", lambda *a: vfl.append(1) or ours_vfl(*a))
        lp, gp = _rtdetr_step(model, _rtdetr_batch(x), True)
    layers = 7  # the encoder's proposals and six decoder layers
    assert spy_match.calls["detr_match_cost"] == layers and not vfl
    assert spy.calls["varifocal_loss"] == layers + 6 * (num_denoising > 0)
    assert spy.calls["bbox_iou"] == 2 * spy.calls["varifocal_loss"]
    assert l64["loss_class_dn"] > 0 if num_denoising else l64["loss_class_dn"] == 0
    _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64)


@pytest.mark.parametrize("mal_alpha,gamma", [(None, 2.0), (0.75, 2.0), (0.5, 1.5)])
def test_deimv2_mal_matches(mal_alpha, gamma):
    """DEIMv2's matchability-aware loss on the fused BCE (class indices, IoU^gamma as score,
    the library's detached weights) against the library's: the value and the logits'
    gradient; half logits go to the library."""
    T = _require("transformers")
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss.loss_deimv2 import Deimv2Loss

    crit = Deimv2Loss(T.Deimv2Config(num_labels=6, mal_alpha=mal_alpha, focal_loss_gamma=gamma))
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 10, 6, generator=g) * 2
    boxes = torch.cat([torch.rand(2, 10, 2, generator=g) * 0.6 + 0.2,
                       torch.rand(2, 10, 2, generator=g) * 0.3 + 0.05], -1)
    targets = [{"class_labels": torch.tensor([1, 4, 4]), "boxes": boxes[0, [2, 5, 7]] + 0.03},
               {"class_labels": torch.tensor([0]), "boxes": boxes[1, [3]] - 0.02}]
    indices = [(torch.tensor([2, 5, 7]), torch.tensor([0, 1, 2])), (torch.tensor([3]), torch.tensor([0]))]

    def run(patched, dtype=torch.float32):
        x, b = logits.to(dtype).requires_grad_(), boxes.to(dtype).requires_grad_()
        with dl.patched() if patched else contextlib.nullcontext():
            out = crit.loss_labels_mal({"logits": x, "pred_boxes": b}, targets, indices, 4.0)
        (gx,) = torch.autograd.grad(out["loss_mal"], x)
        return out["loss_mal"], gx

    want, gw = run(False)
    spy = Spy(dl.DF)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "DF", spy)
        got, gg = run(True)
        assert spy.calls["binary_cross_entropy_with_logits"] == 1
        half, _ = run(True, torch.float16)
        assert spy.calls["binary_cross_entropy_with_logits"] == 1 and half.dtype == torch.float16
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(gg, gw, rtol=2e-5, atol=1e-7)


def test_dfine_loss_local_matches():
    """D-FINE's loss_local with FGL on the DFL kernel (the library's left bins and right
    weights; edges beyond the last bin and before the first among them) and DDF on the fused
    distillation KL: FGL and DDF and the gradient of the corners as close to float64 as the
    library's float32 (a student close to its teacher and one far from it); equal corners
    take the library's shortcut (0); half corners go to the library."""
    T = _require("transformers")
    import detloss_cuda.integrations.transformers as dl
    from transformers.loss.loss_d_fine import DFineLoss

    crit = DFineLoss(T.DFineConfig(num_labels=5))
    R = crit.max_num_bins + 1
    g = torch.Generator().manual_seed(5)
    B, Q = 2, 12
    boxes = torch.cat([torch.rand(B, Q, 2, generator=g) * 0.6 + 0.2,
                       torch.rand(B, Q, 2, generator=g) * 0.3 + 0.05], -1)
    # the third target: a large box off to the side of its query (edges clamped both ways)
    targets = [{"class_labels": torch.tensor([1, 4]), "boxes": boxes[0, [2, 5]] + 0.02},
               {"class_labels": torch.tensor([0, 2]),
                "boxes": torch.cat([boxes[1, [3]] - 0.01, torch.tensor([[0.8, 0.7, 0.35, 1.2]])])}]
    indices = [(torch.tensor([2, 5]), torch.tensor([0, 1])), (torch.tensor([3, 7]), torch.tensor([0, 1]))]
    teacher = torch.randn(B, Q, 4 * R, generator=g) * 3
    for spread in (0.05, 3.0, 0.0):
        corners = teacher + torch.randn(B, Q, 4 * R, generator=g) * spread

        def run(patched, dtype=torch.float32):
            c = corners.to(dtype).requires_grad_()
            out = {"pred_corners": c, "ref_points": boxes.to(dtype), "pred_boxes": boxes.to(dtype),
                   "teacher_corners": teacher.to(dtype), "teacher_logits": torch.randn(B, Q, 5, generator=g).to(dtype)}
            tg = [{k: (v.to(dtype) if v.is_floating_point() else v) for k, v in t.items()} for t in targets]
            with dl.patched() if patched else contextlib.nullcontext():
                losses = crit.loss_local(out, tg, indices, 3.0)
            total = losses["loss_fgl"] + 2 * losses["loss_ddf"]
            return losses, (torch.autograd.grad(total, c)[0] if total.requires_grad else None)

        state = g.get_state()
        with pytest.MonkeyPatch.context() as mp:  # translate_gt takes float32 only (as in the steps)
            _translate_gt_in_float32(mp)
            want64, g64 = run(False, torch.float64)
        g.set_state(state)  # the same teacher logits
        want, gw = run(False)
        g.set_state(state)
        spy = Spy(dl.DF)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dl, "DF", spy)
            got, gg = run(True)
            assert spy.calls["distribution_kl_loss"] == (spread > 0)
            assert spy.calls["distribution_focal_loss"] == 1
            run(True, torch.float16)
            assert spy.calls["distribution_kl_loss"] == (spread > 0)
            assert spy.calls["distribution_focal_loss"] == 1
        w_right, w_left = crit.fgl_targets[1:]
        assert ((w_right == 1) & (w_left == 0)).any() and ((w_right == 0) & (w_left == 1)).any()
        assert got.keys() == want.keys() == {"loss_fgl", "loss_ddf"}
        # as close to float64 as the library's float32 (DDF's KL: ours closer, its terms in double)
        for k in want:
            own, ours = (want[k] - want64[k]).abs().item(), (got[k] - want64[k]).abs().item()
            assert ours <= 2 * own + 8 * F32_EPS * want64[k].abs().item(), (k, spread, ours, own)
        if g64 is not None:
            ref = g64.norm()
            own, ours = (gw - g64).norm() / ref, (gg - g64).norm() / ref
            assert ours <= 2 * own + 1e-6 and (gg - gw).norm() / ref < 1e-5, (spread, ours, own)
