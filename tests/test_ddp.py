"""DistributedDataParallel (issue 15): real launches with torch.distributed.run, 2 workers
(gloo on CPU; the head test uses NCCL where two GPUs are). Workers: tests/_ddp_worker.py."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)
WORKER = os.path.join(HERE, "_ddp_worker.py")
sys.path.insert(0, HERE)
import _ddp_worker  # noqa: E402

pytestmark = pytest.mark.slow


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, tmp_path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YOLO_CONFIG_DIR": str(tmp_path / "yolo")}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=HERE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    """Two ranks, each half of the batch, the loss normalised by the global foreground count:
    after DDP's all-reduce, rank 0's gradients equal one process's on the whole batch."""
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
          WORKER, "head", str(tmp_path)], tmp_path)
    ddp = torch.load(tmp_path / "ddp_grads.pt")
    model, feats, labels, boxes, dist = _ddp_worker.head_and_batch()
    loss = _ddp_worker.head_loss(model, feats, labels, boxes, dist,
                                 (labels < _ddp_worker.C).sum().float())
    loss.backward()
    for name, p in model.named_parameters():
        # float32 sums in a different order (two halves, then the all-reduce)
        torch.testing.assert_close(ddp[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
        assert p.grad.abs().sum() > 0, name


def test_ultralytics_patch_survives_its_multi_gpu_relaunch(tmp_path):
    """patch() in the launching process; ultralytics writes its re-launch script
    (generate_ddp_file) and torch.distributed.run starts 2 workers with DETLOSS_PATCH removed
    from their environment: the line the patch added to the script patches each worker, and
    the fused ops run in both."""
    pytest.importorskip("ultralytics")  # a pinned test requirement; its own tests fail without it
    _run([WORKER, "launch-ultralytics", str(tmp_path)], tmp_path)
    script = (tmp_path / "script.py").read_text()
    assert "detloss_cuda.integrations.ultralytics" in script
    for rank in (0, 1):
        rec = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert rec["patched"], rec
        assert rec["env"] == "ultralytics", rec  # set by the patch() in the worker
        assert {"detloss::tal_assign", "detloss::cls_loss_with_grad",
                "detloss::box_loss_with_grad"} <= set(rec["ops"]), rec


def test_detloss_patch_variable_patches_on_import(tmp_path):
    code = ("import detloss_cuda.integrations.ultralytics as u, detloss_cuda.integrations."
            "torchvision as t; print(u.is_patched(), t.is_patched())")
    env = {**os.environ, "DETLOSS_PATCH": "ultralytics, torchvision"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr
    env["DETLOSS_PATCH"] = "ultralytics,mmdet"
    out = subprocess.run([sys.executable, "-c", "import detloss_cuda"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode != 0 and "DETLOSS_PATCH" in out.stderr and "'mmdet'" in out.stderr


def test_patch_exports_and_unpatch_removes_the_variable(monkeypatch):
    pytest.importorskip("torchvision")
    import detloss_cuda.integrations.torchvision as tv

    monkeypatch.setenv("DETLOSS_PATCH", "ultralytics")
    with tv.patched():
        assert os.environ["DETLOSS_PATCH"] == "ultralytics,torchvision"
    assert os.environ["DETLOSS_PATCH"] == "ultralytics"
