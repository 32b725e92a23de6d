"""Worker code for tests/test_ddp.py, run in processes started by torch.distributed.run.

    python -m torch.distributed.run --nproc_per_node 2 tests/_ddp_worker.py head OUT_DIR
        a small detector head trained with the fused losses under DistributedDataParallel
        (gloo on CPU, NCCL where each rank has a GPU); rank 0 writes the gradients.
    python tests/_ddp_worker.py launch-ultralytics OUT_DIR
        patches ultralytics here, has ultralytics write its multi-GPU re-launch script for a
        probe trainer, and runs that script with torch.distributed.run (2 CPU workers); each
        worker builds ultralytics' YOLOv8n loss, runs a DDP step and writes what ran.
"""
import json
import os
import socket
import subprocess
import sys
import types

import torch

B, A, C, R = 8, 64, 5, 16  # the global batch; anchors per image, classes, DFL bins


def head_and_batch():
    """A tiny dense head (per anchor: C class logits, 4 x R box bins) and a fixed global
    batch: images' features, class labels (C = background), target boxes and distances."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, C + 4 * R))
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(B, A, 12, generator=g)
    labels = torch.randint(0, C + 1, (B, A), generator=g)
    xy = torch.rand(B, A, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(B, A, 2, generator=g) * 20 + 1], -1)
    dist = torch.rand(B, A, 4, generator=g) * (R - 1)
    return model, feats, labels, boxes, dist


def head_loss(model, feats, labels, boxes, dist, num_pos):
    """Focal (class indices) + GIoU + DFL over the foreground, normalised by `num_pos`, the
    number of foreground anchors of the whole global batch (RetinaNet's normalisation)."""
    import detloss_cuda.functional as DF

    out = model(feats)
    logits, bins = out[..., :C], out[..., C:].reshape(*out.shape[:-1], 4, R)
    fg = labels < C
    cls = DF.sigmoid_focal_loss(logits, labels, reduction="sum")
    lt_rb = DF.distribution_integral(bins[fg])  # [P, 4] distances, as a GFL head decodes
    centre = (boxes[fg][:, :2] + boxes[fg][:, 2:]) / 2
    pred = torch.cat([centre - lt_rb[:, :2], centre + lt_rb[:, 2:]], -1)
    box = DF.iou_loss(pred, boxes[fg], "giou", reduction="sum")
    dfl = DF.distribution_focal_loss(bins[fg], dist[fg], reduction="sum")
    return (cls + box + dfl) / num_pos


def run_head(out_dir):
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    model, feats, labels, boxes, distances = head_and_batch()
    model = model.to(dev)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    share = slice(rank * B // world, (rank + 1) * B // world)
    part = [t[share].to(dev) for t in (feats, labels, boxes, distances)]
    num_pos = (part[1] < C).sum().float()
    dist.all_reduce(num_pos)  # the global count
    # DDP averages gradients over ranks: each rank's loss is scaled by the world size
    loss = head_loss(ddp, *part, num_pos) * world
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad.cpu() for n, p in model.named_parameters()},
                   os.path.join(out_dir, "ddp_grads.pt"))
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------- ultralytics
class ProbeTrainer:
    """Stands in for ultralytics' trainer in the re-launch script ultralytics writes
    (`state["trainer"](cfg=..., overrides=..., _callbacks=...)`, then `.model =`, `.train()`):
    train() builds YOLOv8n's loss and runs one DDP step, recording which ops ran."""

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        self.args = overrides or {}
        self.callbacks = _callbacks or {}
        self.model = None

    def train(self):
        import torch.distributed as dist
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        import detloss_cuda.integrations.ultralytics as dl

        torch.manual_seed(0)
        model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
        model.args = get_cfg()
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        criterion = model.init_criterion()
        x = torch.rand(1, 3, 64, 64)
        batch = {"batch_idx": torch.tensor([0.0]), "cls": torch.tensor([[3.0]]),
                 "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss, _ = criterion(ddp(x), batch)
            loss.sum().backward()
        ops = sorted({e.name for e in prof.events() if e.name.startswith("detloss::")})
        with open(os.path.join(self.args["out_dir"], f"rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "patched": dl.is_patched(), "ops": ops,
                       "env": os.environ.get("DETLOSS_PATCH"),
                       "loss": [float(v) for v in loss.detach().reshape(-1)]}, f)
        dist.barrier()
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ultralytics(out_dir):
    """What ultralytics' trainer does for device=[0, 1]: generate_ddp_file, then
    torch.distributed.run on it (ultralytics' own _setup_ddp needs GPUs: the probe stands in
    for the trainer class; the script and the launcher are ultralytics')."""
    import detloss_cuda.integrations.ultralytics as dl
    from ultralytics.utils import dist as udist

    dl.patch()
    trainer = ProbeTrainer()
    trainer.args = types.SimpleNamespace(out_dir=out_dir)  # ultralytics pickles vars(args)
    script = udist.generate_ddp_file(trainer)
    try:
        with open(script, encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(out_dir, "script.py"), "w") as f:
            f.write(text)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), script]
        # without DETLOSS_PATCH (which patch() exported): the script's own line must patch
        env = {k: v for k, v in os.environ.items() if k != "DETLOSS_PATCH"}
        env["OMP_NUM_THREADS"] = "1"
        subprocess.run(cmd, check=True, timeout=600, env=env)
    finally:
        for path in (script, os.path.splitext(script)[0] + ".pt"):
            if os.path.exists(path):
                os.remove(path)


if __name__ == "__main__":
    what, out = sys.argv[1], sys.argv[2]
    if what == "head":
        run_head(out)
    elif what == "launch-ultralytics":
        import _ddp_worker  # by its module name, so the pickled trainer class is a reference

        _ddp_worker.launch_ultralytics(out)
    else:
        raise SystemExit(f"unknown command {what!r}")
